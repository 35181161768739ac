"""The library from every entry point: agent processes never run the user's `__main__`.

Each form runs as a subprocess in its own folder: a program with top-level code (a side effect that appends
one mark to `marks.txt`) that starts a pool of two agents and prints their replies. The program must work and
its top-level code must run exactly once, whatever the number of agents.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llmling.errors import ConfigError

PYTHON = sys.executable
BIN = Path(sys.executable).parent

CALLBACKS = """
import os


def echo(prompt):
    return f"echo: {prompt}"
"""

# Top-level code without a `__main__` guard, as the guide writes it.
PROGRAM = """
import asyncio
from llmling import AgentPool

with open("marks.txt", "a") as marks:
    marks.write("x")

CONFIG = {"agents": {"a": {"callback": "cb:echo"}, "b": {"callback": "cb:echo"}}}


async def main():
    async with AgentPool(CONFIG) as pool:
        replies = [await pool.get_agent(name).run("hi " + name) for name in ("a", "b")]
        print("REPLIES", [reply.content for reply in replies])


asyncio.run(main())
"""

# The same for IPython and Jupyter: top-level `await`, no asyncio.run.
AWAITED = """
from llmling import AgentPool

with open("marks.txt", "a") as marks:
    marks.write("x")

CONFIG = {"agents": {"a": {"callback": "cb:echo"}, "b": {"callback": "cb:echo"}}}
async with AgentPool(CONFIG) as pool:
    replies = [await pool.get_agent(name).run("hi " + name) for name in ("a", "b")]
    print("REPLIES", [reply.content for reply in replies])
"""

EXPECTED = "REPLIES ['echo: hi a', 'echo: hi b']"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "cb.py").write_text(CALLBACKS)
    return tmp_path


def run(command: list[str], folder: Path, stdin: str | None = None) -> str:
    done = subprocess.run(
        command, cwd=folder, input=stdin, capture_output=True, text=True, timeout=120, env=_env(folder)
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def _env(folder: Path) -> dict[str, str]:
    # The pools' sockets and history in the test's folder, never the user's.
    return {**os.environ, "XDG_RUNTIME_DIR": str(folder), "XDG_STATE_HOME": str(folder / "state")}


def assert_ran_once(folder: Path, output: str) -> None:
    assert EXPECTED in output, output
    assert (folder / "marks.txt").read_text() == "x", "the program's top-level code ran more than once"


def test_unguarded_script(folder: Path) -> None:
    (folder / "program.py").write_text(PROGRAM)
    assert_ran_once(folder, run([PYTHON, "program.py"], folder))


def test_script_on_stdin(folder: Path) -> None:
    assert_ran_once(folder, run([PYTHON, "-"], folder, stdin=PROGRAM))


def test_python_c(folder: Path) -> None:
    assert_ran_once(folder, run([PYTHON, "-c", PROGRAM], folder))


def test_python_m(folder: Path) -> None:
    (folder / "program.py").write_text(PROGRAM)
    assert_ran_once(folder, run([PYTHON, "-m", "program"], folder))


def test_ipy_file_under_ipython(folder: Path) -> None:
    # IPython syntax that plain Python cannot import: the agents must not try to.
    (folder / "program.ipy").write_text(PROGRAM + "\nshell = !echo from-the-shell\nprint(shell)\n")
    output = run([str(BIN / "ipython"), "--no-banner", "program.ipy"], folder)
    assert_ran_once(folder, output)
    assert "from-the-shell" in output


def test_ipython_top_level_await(folder: Path) -> None:
    assert_ran_once(folder, run([str(BIN / "ipython"), "--no-banner", "-c", AWAITED], folder))


def run_notebook(folder: Path, sources: list[str], env: dict[str, str], allow_errors: bool = False) -> str:
    """Run `sources` as the cells of a notebook in `folder` on an ipykernel of this interpreter (a kernel spec
    in a folder of its own, never the user's kernels); return the text of every output, tracebacks included."""
    import nbclient
    import nbformat

    kernels = folder / "jupyter" / "kernels" / "llmling-test"
    kernels.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [PYTHON, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "llmling test",
        "language": "python",
        "env": env,
    }
    (kernels / "kernel.json").write_text(json.dumps(spec))
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in sources])
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(folder / "jupyter")
    try:
        client = nbclient.NotebookClient(
            notebook,
            kernel_name="llmling-test",
            timeout=120,
            allow_errors=allow_errors,
            resources={"metadata": {"path": str(folder)}},
        )
        client.execute()
    finally:
        if old is None:
            del os.environ["JUPYTER_PATH"]
        else:
            os.environ["JUPYTER_PATH"] = old
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts += [output.get("text", ""), output.get("evalue", ""), *output.get("traceback", [])]
    return "\n".join(texts)


def test_jupyter_notebook(folder: Path) -> None:
    outputs = run_notebook(folder, [textwrap.dedent(AWAITED), "print('after')"], _env(folder))
    assert_ran_once(folder, outputs)
    assert "after" in outputs


def test_callback_in_main_is_refused_at_config_time(folder: Path) -> None:
    from llmling.config import parse_config

    with pytest.raises(ConfigError) as caught:
        parse_config("agents:\n  a:\n    callback: __main__:handle\n", "system.yml")
    message = str(caught.value)
    assert message.count("\n") == 0
    assert message.startswith("system.yml:3:") and "__main__:handle" in message, message


def test_function_object_from_main_is_refused(folder: Path) -> None:
    program = "from llmling import Agent\n\ndef handle(prompt):\n    return prompt\n\nAgent(callback=handle)\n"
    done = subprocess.run([PYTHON, "-c", program], cwd=folder, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "handle" in last and "__main__" in last, done.stderr


def test_function_object_from_a_module_is_its_import_path(folder: Path) -> None:
    program = textwrap.dedent(
        """
        import asyncio
        from llmling import Agent
        from cb import echo

        async def main():
            async with Agent(callback=echo) as agent:
                print((await agent.run("hi")).content)

        asyncio.run(main())
        """
    )
    assert "echo: hi" in run([PYTHON, "-c", program], folder)
