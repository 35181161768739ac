"""Where sockets live: a private (0700) directory per user, one socket per system name."""

from __future__ import annotations

import os
import pwd
import socket
import stat
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


def _owner(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def prepare_dir(socket: Path) -> None:
    """Create the socket's directory (0700 for every level we create).

    The default runtime directory is ours alone: it must be a real directory (not a symlink) that belongs to us,
    and is tightened to 0700. A directory named by an override is the user's choice and is left as it is; the
    socket itself is always 0600. Raises PermissionError naming the path, its owner and its mode.
    """
    directory = socket.parent
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise PermissionError(f"runtime dir {directory} exists and is not a directory") from None
    except PermissionError:
        raise PermissionError(f"cannot create runtime dir {directory}: permission denied") from None
    if directory != runtime_dir():
        return
    st = directory.lstat()
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        raise PermissionError(f"runtime dir {directory} is a symlink (owned by {_owner(st.st_uid)}); remove it")
    if st.st_uid != os.getuid():
        raise PermissionError(
            f"runtime dir {directory} belongs to {_owner(st.st_uid)} (mode {mode:04o}), "
            f"not to {_owner(os.getuid())}; remove it, or choose another with XDG_RUNTIME_DIR or --socket"
        )
    if mode & 0o077:
        os.chmod(directory, 0o700)
