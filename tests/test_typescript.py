"""The browser client's TypeScript declarations, checked by tsc --strict against what users write."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
TSC = ROOT / "tests" / "node" / "node_modules" / ".bin" / "tsc"
MODULE = "../../aether_tornado/static/aether-v3.js"

# Skipped on a developer's machine without npm; CI (CI=true, which .ci/run sets) installs it and never skips.
pytestmark = pytest.mark.skipif(
    not TSC.exists() and shutil.which("npm") is None and os.environ.get("CI") != "true", reason="npm is not installed"
)


def compile_strict(folder: Path, source: str) -> subprocess.CompletedProcess:
    """Compile ``source`` alone with every strict check, as a module of tests/node."""
    assert TSC.exists(), "tests/node has no compiler: run make test, which installs it"
    file = folder / "check.ts"
    file.write_text(source)
    options = ["--strict", "--noEmit", "--target", "es2022", "--module", "esnext", "--moduleResolution", "bundler"]
    return subprocess.run(
        [str(TSC), *options, "--lib", "es2022,dom", str(file)], capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def folder() -> Path:
    """A file beside the typed example, so that the module path is the same for both; removed after."""
    path = ROOT / "tests" / "node" / "generated"
    path.mkdir(exist_ok=True)
    yield path
    shutil.rmtree(path)


def test_the_readme_s_browser_examples_compile_under_strict_typescript(folder):
    blocks = re.findall(r"```js\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    assert len(blocks) >= 2  # the client and its recovery handler
    source = "\n".join(blocks).replace('"/v3/client/aether-v3.js"', f'"../{MODULE}"')
    result = compile_strict(folder, "declare function reloadTheChat(): void;\n" + source)
    assert result.returncode == 0, result.stdout


def test_a_frontend_s_typical_uses_compile_under_strict_typescript(folder):
    source = (ROOT / "tests" / "node" / "types_in_use.ts").read_text().replace(f'"{MODULE}"', f'"../{MODULE}"')
    result = compile_strict(folder, source)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ('client.on("msg", (message) => { const n: number = message.msg; });', "TS2322"),
        ('client.on("presence", (message) => console.log(message.payload.clients));', "TS2339"),
        ('client.send({ msg_type: "msg", target: "everybody" });', "TS2322"),
    ],
)
def test_a_mistake_is_caught(folder, line, error):
    """The checks bite: a wrong type, a presence payload read without asking its event, a bad target."""
    header = f'import {{ AetherClient }} from "../{MODULE}";\n'
    source = header + 'const client = new AetherClient({ groupId: "g", clientId: "c" });\n' + line + "\n"
    result = compile_strict(folder, source)
    assert result.returncode != 0 and error in result.stdout, result.stdout
