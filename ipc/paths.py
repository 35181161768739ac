"""Where sockets live: a private (0700) directory per user, one socket per system name."""

from __future__ import annotations

import os
import socket
from pathlib import Path

SOCKET_ENV = "LLMLING_SOCKET"
# sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


def runtime_dir() -> Path:
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "llmling"
    return Path(f"/tmp/llmling-{os.getuid()}")


def socket_path(name: str, override: str | os.PathLike[str] | None = None) -> Path:
    """The control socket of system `name`: `override`, else $LLMLING_SOCKET, else the runtime dir."""
    if override:
        return Path(override)
    env = os.environ.get(SOCKET_ENV)
    if env:
        return Path(env)
    return runtime_dir() / f"{name}.sock"


def is_live(path: Path) -> bool:
    """Whether a server accepts connections on the socket at `path` right now."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(os.fspath(path))
        except OSError:
            return False
    return True


def check_length(path: Path) -> None:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ValueError(f"socket path is longer than {MAX_SOCKET_PATH} bytes: {path}")


def prepare_dir(socket: Path) -> None:
    """Create the socket's directory (0700 for every level we create).

    The default runtime directory is ours alone: it must belong to us and is tightened to 0700. A directory
    named by an override is the user's choice and is left as it is; the socket itself is always 0600.
    """
    directory = socket.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if directory != runtime_dir():
        return
    st = directory.stat()
    if st.st_uid != os.getuid():
        raise PermissionError(f"{directory} belongs to uid {st.st_uid}, not to us")
    if st.st_mode & 0o077:
        os.chmod(directory, 0o700)
