"""File triggers: watchfiles watches each trigger's base folders; each debounced batch of matching changes
becomes one run whose prompt names every change.

A path entry is a file, a folder (everything below it) or a glob (`docs/**/*.md`: `**` spans folders, `*`
and `?` stay within one), relative to the config's folder. The watcher watches the glob's longest folder
without wildcards and matches each change against the pattern. While a trigger's run is in flight, new
changes are collected and coalesced (the last change of a path wins, an added file stays "added"), and go
out as one run when it ends: one run at a time per trigger, none lost, no pile-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from pathlib import Path
from typing import Any

from watchfiles import Change, DefaultFilter, awatch

from llmling.errors import StartupError
from llmling.supervisor.triggers.base import TriggerHost, TriggerState, render

_CHANGES = {Change.added: "added", Change.modified: "modified", Change.deleted: "deleted"}
_WILDCARD = re.compile(r"[*?\[]")
# Seconds between attempts when the watcher itself fails (e.g. its folder was removed).
RETRY_DELAY = 2.0
# Seconds of steady changes after which they go out as a run even though they have not stopped.
MAX_GROUP = 2.0


def _component(part: str) -> str:
    out = []
    i = 0
    while i < len(part):
        char = part[i]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and (end := part.find("]", i + 2)) != -1:
            body = part[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append(f"[{body.replace(chr(92), chr(92) * 2)}]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """The regex of an absolute glob: `**` matches any number of folders (none too), `*`/`?` one name."""
    parts = pattern.split("/")
    regex = []
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part == "**":
            regex.append(".*" if last else "(?:[^/]+/)*")
        else:
            regex.append(_component(part) + ("" if last else "/"))
    return re.compile("".join(regex) + r"\Z")


def _settle(changes: set[tuple[Change, str]]) -> dict[str, str]:
    """One change per path of a batch. Several kinds for one path (an editor's atomic save is often
    deleted + added) are settled by what is on disk now."""
    kinds: dict[str, set[Change]] = {}
    for change, path in changes:
        kinds.setdefault(path, set()).add(change)
    settled = {}
    for path in sorted(kinds):
        found = kinds[path]
        if len(found) == 1:
            settled[path] = _CHANGES.get(found.pop(), "modified")
        elif not os.path.exists(path):
            settled[path] = "deleted"
        else:
            settled[path] = "added" if found == {Change.added, Change.modified} else "modified"
    return settled


class PathSpec:
    """One `paths` entry: the folder to watch and the test for a changed path."""

    def __init__(self, entry: str, base_dir: Path) -> None:
        absolute = Path(os.path.normpath(base_dir / os.path.expanduser(entry)))
        self.entry = entry
        if _WILDCARD.search(str(absolute)):
            parts = absolute.parts
            fixed = next(i for i, part in enumerate(parts) if _WILDCARD.search(part))
            self.watch = Path(*parts[:fixed])
            self._regex: re.Pattern[str] | None = glob_regex(absolute.as_posix())
            self._exact: Path | None = None
        elif absolute.is_dir():
            self.watch, self._regex, self._exact = absolute, None, None
        else:
            # A single file: watch its folder (editors replace files, which would end a watch on the file).
            self.watch, self._regex, self._exact = absolute.parent, None, absolute

    def matches(self, path: str) -> bool:
        if self._regex is not None:
            return self._regex.match(path) is not None
        if self._exact is not None:
            return path == str(self._exact)
        return path == str(self.watch) or path.startswith(str(self.watch) + os.sep)


class _Watcher:
    """One file trigger: a watch task that collects changes and a dispatch task that turns them into runs."""

    def __init__(self, host: TriggerHost, trigger: TriggerState) -> None:
        self.host = host
        self.trigger = trigger
        self.config: Any = trigger.config
        self.log = host.log.bind(agent=trigger.agent)
        self.specs = [PathSpec(entry, host.base_dir) for entry in self.config.paths]
        self.extensions = tuple(self.config.extensions or ())
        self._default_filter = DefaultFilter()
        self.stop_event = asyncio.Event()
        # Invariant: changes seen and not yet handed to a run, by path, in arrival order.
        self.pending: dict[str, str] = {}
        self._wake = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []

    def roots(self) -> list[Path]:
        """The folders to watch, none inside another. Raises StartupError for one that does not exist."""
        roots: list[Path] = []
        for spec in self.specs:
            if not spec.watch.is_dir():
                raise StartupError(
                    f"trigger {self.trigger.label}: {spec.watch} (from {spec.entry!r}) is not an existing folder"
                )
            roots.append(spec.watch)
        roots.sort(key=lambda p: len(p.parts))
        kept: list[Path] = []
        for root in roots:
            if not any(root == k or k in root.parents for k in kept):
                kept.append(root)
        return kept

    def _accept(self, change: Change, path: str) -> bool:
        if not self._default_filter(change, path):
            return False
        if self.extensions and not path.endswith(self.extensions):
            return False
        return any(spec.matches(path) for spec in self.specs)

    def start(self) -> None:
        roots = self.roots()
        self.tasks = [
            self.host.spawn(self._watch(roots), name=f"file-trigger-{self.trigger.label}"),
            self.host.spawn(self._dispatch(), name=f"file-dispatch-{self.trigger.label}"),
        ]

    async def _watch(self, roots: list[Path]) -> None:
        # watchfiles groups what comes within `step` ms; the trigger's own debounce is in `_dispatch`. A short
        # step also bounds how long the watcher thread takes to notice `stop_event`.
        step = max(10, min(50, self.config.debounce_ms))
        while not self.stop_event.is_set():
            try:
                async for changes in awatch(
                    *roots, watch_filter=self._accept, debounce=4 * step, step=step, stop_event=self.stop_event
                ):
                    self._collect(changes)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.error(
                    "file trigger {}: watcher failed: {}; retrying in {} s", self.trigger.label, exc, RETRY_DELAY
                )
                self.trigger.last_error = f"watcher failed: {exc}"
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop_event.wait(), RETRY_DELAY)

    def _collect(self, changes: set[tuple[Change, str]]) -> None:
        if not self.trigger.enabled:
            self.host.skip(self.trigger, "disabled", changes=len(changes))
            return
        for path, name in _settle(changes).items():
            if self.pending.get(path) == "added" and name == "modified":
                continue
            if self.pending.get(path) == "added" and name == "deleted":
                del self.pending[path]
                continue
            self.pending.pop(path, None)
            self.pending[path] = name
        if self.pending:
            self._wake.set()

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        quiet = self.config.debounce_ms / 1000
        longest = max(MAX_GROUP, 10 * quiet)
        while True:
            await self._wake.wait()
            # Debounce: wait until no change came for `debounce_ms` (a steady stream goes out every `longest`).
            first = loop.time()
            while quiet > 0 and loop.time() - first < longest:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), quiet)
                except TimeoutError:
                    break
            self._wake.clear()
            if not self.pending:
                continue
            batch, self.pending = self.pending, {}
            if not self.host.accepting:
                return
            try:
                prompt = self.prompt(batch)
            except ValueError as exc:
                self.log.error("file trigger {}: {}", self.trigger.label, exc)
                self.trigger.last_error = str(exc)
                self.host.skip(self.trigger, "template", error=str(exc))
                continue
            firing = self.host.try_fire(
                self.trigger,
                prompt,
                changes=[{"change": change, "path": self._shown(path)} for path, change in batch.items()],
            )
            # One run at a time: changes arriving meanwhile wait in `pending` and go out together.
            if firing is not None:
                await asyncio.wait({firing.task})

    def _shown(self, path: str) -> str:
        try:
            return str(Path(path).relative_to(self.host.base_dir))
        except ValueError:
            return path

    def prompt(self, batch: dict[str, str]) -> str:
        template = self.config.template
        if template is None:
            if len(batch) == 1:
                ((path, change),) = batch.items()
                return f"File {change}: {self._shown(path)}"
            lines = "\n".join(f"- {change}: {self._shown(path)}" for path, change in batch.items())
            return f"Files changed:\n{lines}"
        return "\n".join(
            render(
                template,
                change=change,
                path=self._shown(path),
                abs_path=path,
                name=self.trigger.name,
                agent=self.trigger.agent,
            )
            for path, change in batch.items()
        )

    async def stop(self) -> None:
        self.stop_event.set()
        if not self.tasks:
            return
        _, pending = await asyncio.wait(self.tasks[:1], timeout=2.0)
        for task in (*pending, *self.tasks[1:]):
            task.cancel()
        await asyncio.wait(self.tasks, timeout=2.0)


class FileTriggers:
    """The service of every file trigger of a system."""

    name = "file-triggers"

    def __init__(self, host: TriggerHost, triggers: list[TriggerState]) -> None:
        self.watchers = [_Watcher(host, trigger) for trigger in triggers]

    async def start(self) -> None:
        for watcher in self.watchers:
            watcher.roots()  # every folder must exist before any watcher starts
        for watcher in self.watchers:
            watcher.start()
        # Let each watcher task take its first step: watchfiles sets up its OS watch (RustNotify) synchronously in
        # that step, so a change made once the system reports READY is seen. A yield, not a timed wait.
        for _ in range(2):
            await asyncio.sleep(0)

    async def stop(self) -> None:
        await asyncio.gather(*(watcher.stop() for watcher in self.watchers))


__all__ = ["FileTriggers", "PathSpec", "glob_regex"]
