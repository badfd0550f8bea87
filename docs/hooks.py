"""MkDocs hook: serve files that live outside ``docs/`` at their repository paths.

The benchmark figures (``benchmarks/results/*.png``) and the tutorial figures
(``tutorials/figures/*.png``) stay next to the scripts that write them; this hook adds them
to the site under the same relative paths, so a page links ``../benchmarks/results/bo.png``
style paths that ``mkdocs build --strict`` checks like any other file.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
EXTERNAL = ["benchmarks/results/*.png", "tutorials/figures/*.png"]


def on_files(files: Files, config) -> Files:
    """Add every file matching ``EXTERNAL`` under ``assets/`` + its repository path."""
    for pattern in EXTERNAL:
        for path in sorted(ROOT.glob(pattern)):
            rel = path.relative_to(ROOT).as_posix()
            files.append(File.generated(config, f"assets/{rel}", abs_src_path=str(path)))
    return files
