"""Gantry's completion sample, from the README, run against a real broker and worker.

The sample changes nothing but its imports. Two prompt versions are released to `test`
one after the other; the joined records and `streams stats --by-version` must carry the
version number each completion was logged with, so % thumbs up per version works.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from harness import Start, read_topic

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent.parent
# A stand-in for the pre-1.0 `openai` module the sample imports: no network, same shape.
FAKE_OPENAI = {
    "openai/__init__.py": (
        "import uuid\n"
        "from openai import util\n"
        "class Completion:\n"
        "    @staticmethod\n"
        "    def create(**request):\n"
        "        text = 'summary of ' + request['prompt']\n"
        "        return {'id': 'cmpl-' + uuid.uuid4().hex, 'object': 'text_completion',\n"
        "                'model': request['model'], 'choices': [{'text': text, 'index': 0}]}\n"
    ),
    "openai/util.py": "def convert_to_dict(obj):\n    return dict(obj)\n",
}
# The test's driver, after the sample: one completion per character of argv[1], then
# thumbs up ("1") or down ("0") on each, as a user would log them later.
DRIVER = """
import sys
ups = [c == "1" for c in sys.argv[1]]
keys = [generate({"text": f"text {i}"})["id"] for i in range(len(ups))]
my_llm_app.log(feedbacks=[{"thumbs_up": up} for up in ups], join_keys=keys)
gantry.flush()
print(" ".join(keys))
"""
PROMPTS = {1: "Summarize {{text}}.", 2: "Summarize {{text}} in one line."}


def readme_sample() -> str:
    """The README's Gantry sample: the Python block that starts with `import streams as gantry`."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    (sample,) = [block for block in blocks if block.startswith("import streams as gantry")]
    return sample


def run(env: dict[str, str], *args: str, **extra: str) -> str:
    done = subprocess.run(
        list(args), env={**os.environ, **env, **extra}, capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_readme_sample_logs_completions_per_released_version(
    workers: Start, env: dict[str, str], topic_prefix: str, bootstrap: str, tmp_path: Path
) -> None:
    sample = readme_sample()
    assert sample.splitlines()[:2] == [
        "import streams as gantry  # was: import gantry",
        "from streams import fill_prompt  # was: from gantry.applications.llm_utils"
        " import fill_prompt",
    ]
    for name, text in FAKE_OPENAI.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    script = tmp_path / "sample.py"
    script.write_text(sample + DRIVER, encoding="utf-8")
    workers()
    cli = (sys.executable, "-m", "streams.cli", "versions")
    app = ("--application", "my-llm-app")
    for prompt in PROMPTS.values():
        run(env, *cli, "create", *app, "--prompt", prompt, "--model", "text-davinci-002")

    thumbs = {1: "1000", 2: "1110"}
    keys: dict[str, tuple[int, bool]] = {}
    for number, ups in thumbs.items():
        run(env, *cli, "release", *app, "--version", str(number), "--env", "test")
        printed = run(env, sys.executable, str(script), ups, PYTHONPATH=str(tmp_path))
        for key, up in zip(printed.split(), ups, strict=True):
            keys[key] = (number, up == "1")

    joined = read_topic(bootstrap, topic_prefix + "joined", len(keys), timeout=60)
    seen: dict[str, Any] = {}
    for read in joined:
        record = read.value
        number, up = keys[record["join_key"]]
        seen[record["join_key"]] = record["version"]
        assert record["version"] == number
        assert record["feedback"] == {"thumbs_up": up}
        text = record["inputs"]["prompt_values"]["text"]
        assert record["inputs"]["prompt"] == PROMPTS[number].replace("{{text}}", text)
        assert record["outputs"]["choices"][0]["text"].startswith("summary of Summarize")
    assert seen == {key: number for key, (number, _) in keys.items()}

    # % thumbs up per prompt version, as the worker published it on feedback-stats.
    expected = {
        number: [len(ups), ups.count("1"), ups.count("0")] for number, ups in thumbs.items()
    }
    deadline = time.monotonic() + 60
    while True:
        stats = orjson.loads(
            run(
                env,
                sys.executable,
                "-m",
                "streams.cli",
                "stats",
                *app,
                "--field",
                "thumbs_up",
                "--by-version",
                "--every",
                "36500d",
                "--format",
                "json",
            )
        )
        got = {row["version"]: [row["count"], row["true"], row["false"]] for row in stats["rows"]}
        if got == expected or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert got == expected
    assert {row["version"]: row["positive_pct"] for row in stats["rows"]} == {1: 25.0, 2: 75.0}
