"""The README's Python example runs as written (in a scratch folder)."""

import os
import re
import runpy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_python_example():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text[text.index("## Use from Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_use_from_python_example_runs(tmp_path, monkeypatch, capsys):
    script = tmp_path / "example.py"
    script.write_text(readme_python_example(), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(ROOT)
    runpy.run_path(str(script), run_name="__main__")
    printed = capsys.readouterr().out
    assert "detected: True" in printed and "(512, 512)" in printed
