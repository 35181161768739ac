"""File triggers: real writes in a watched folder become runs of a real agent process."""

from __future__ import annotations

import re
import time

from llmling.supervisor.triggers.file import glob_regex
from tests._automation import RECORDER, got, wait_until


def test_glob_regex() -> None:
    deep = glob_regex("/base/docs/**/*.md")
    assert deep.match("/base/docs/a.md")
    assert deep.match("/base/docs/x/y/z.md")
    assert not deep.match("/base/docs/a.txt")
    assert not deep.match("/base/other/a.md")
    flat = glob_regex("/base/docs/*.md")
    assert flat.match("/base/docs/a.md") and not flat.match("/base/docs/x/a.md")
    assert glob_regex("/b/report-?.[ct]sv").match("/b/report-1.csv")
    assert not glob_regex("/b/[!a]*").match("/b/abc")
    assert glob_regex("/b/**").match("/b/any/thing")


def test_file_changes_become_runs(systems) -> None:  # type: ignore[no-untyped-def]
    system = systems.make(
        """
        agents:
          file_processor:
            callback: rec:record
            triggers:
              - type: file
                name: watch_docs
                paths: ["docs/**/*.md"]
                extensions: [".md"]
                debounce_ms: 100
        """,
        modules={"rec": RECORDER},
    )
    folder = system.config.parent
    docs = folder / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "old.md").write_text("old")
    system.start()

    (docs / "sub" / "new.md").write_text("# new")
    calls = wait_until(lambda: got(folder), what="a run for the new file")
    assert calls[0]["prompt"] == "File added: docs/sub/new.md"

    (docs / "notes.txt").write_text("ignored")  # not *.md
    (docs / "old.md").write_text("changed")
    wait_until(lambda: len(got(folder)) >= 2, what="a run for the modified file")
    (docs / "old.md").unlink()
    wait_until(lambda: len(got(folder)) >= 3, what="a run for the deleted file")
    prompts = [call["prompt"] for call in got(folder)]
    assert prompts[1] == "File modified: docs/old.md"
    assert prompts[2] == "File deleted: docs/old.md"
    assert not any("notes.txt" in prompt for prompt in prompts)

    info = next(item for item in system.request({"t": "triggers"})["triggers"] if item["name"] == "watch_docs")
    assert info["fired"] == 3 and info["failed"] == 0


def test_burst_of_changes_is_one_run_and_template(systems) -> None:  # type: ignore[no-untyped-def]
    system = systems.make(
        """
        agents:
          indexer:
            callback: rec:record
            triggers:
              - type: file
                name: inbox
                paths: [inbox]
                debounce_ms: 400
                template: "{agent}/{name}: {change} {path}"
        """,
        modules={"rec": RECORDER},
    )
    folder = system.config.parent
    (folder / "inbox").mkdir()
    system.start()
    for index in range(5):
        (folder / "inbox" / f"f{index}.txt").write_text(str(index))
        time.sleep(0.02)
    calls = wait_until(lambda: got(folder), what="the batch run")
    time.sleep(1.0)  # nothing else may follow: the batch was one run
    calls = got(folder)
    assert len(calls) == 1, calls
    lines = calls[0]["prompt"].splitlines()
    assert lines == [f"indexer/inbox: added inbox/f{index}.txt" for index in range(5)]


def test_changes_during_a_run_are_coalesced(systems) -> None:  # type: ignore[no-untyped-def]
    system = systems.make(
        """
        agents:
          indexer:
            callback: rec:slow
            triggers:
              - {type: file, name: inbox, paths: [inbox], debounce_ms: 50}
        """,
        modules={"rec": RECORDER},
        env={"REC_SLOW": "1.2"},
    )
    folder = system.config.parent
    (folder / "inbox").mkdir()
    system.start()
    (folder / "inbox" / "first.txt").write_text("1")
    wait_until(lambda: system.request({"t": "status"})["pending_runs"], what="the first run to start")
    for name in ("a.txt", "b.txt", "c.txt"):  # while the first run is in flight
        (folder / "inbox" / name).write_text(name)
        time.sleep(0.15)
    calls = wait_until(lambda: len(got(folder)) >= 2 and got(folder), timeout=30, what="two runs")
    time.sleep(1.5)
    calls = got(folder)
    assert len(calls) == 2, [call["prompt"] for call in calls]
    assert calls[0]["prompt"] == "File added: inbox/first.txt"
    assert calls[1]["prompt"].splitlines() == [
        "Files changed:",
        "- added: inbox/a.txt",
        "- added: inbox/b.txt",
        "- added: inbox/c.txt",
    ]
    assert calls[1]["start"] >= calls[0]["end"] - 0.01, "runs of one trigger overlapped"


def test_disabled_file_trigger_ignores_changes(systems) -> None:  # type: ignore[no-untyped-def]
    system = systems.make(
        """
        agents:
          indexer:
            callback: rec:record
            triggers:
              - {type: file, name: inbox, paths: [inbox], debounce_ms: 50, enabled: false}
        """,
        modules={"rec": RECORDER},
    )
    folder = system.config.parent
    (folder / "inbox").mkdir()
    system.start()
    (folder / "inbox" / "ignored.txt").write_text("x")
    time.sleep(1.0)
    assert got(folder) == []
    reply = system.request({"t": "trigger", "agent": "indexer", "name": "inbox", "enabled": True})
    assert reply["t"] == "ok" and reply["trigger"]["enabled"] is True
    (folder / "inbox" / "seen.txt").write_text("y")
    calls = wait_until(lambda: got(folder), what="a run once enabled")
    assert calls[0]["prompt"] == "File added: inbox/seen.txt"


def test_missing_folder_fails_the_start(systems) -> None:  # type: ignore[no-untyped-def]
    system = systems.make(
        """
        agents:
          indexer:
            callback: rec:record
            triggers:
              - {type: file, name: inbox, paths: ["nowhere/**/*.md"]}
        """,
        modules={"rec": RECORDER},
    )
    assert system.run() == 1
    assert re.search(r"trigger indexer/inbox: .*nowhere.* is not an existing folder", system.log_text())
