"""The small demonstration model shipped inside the package, so a fresh install can chat.

It is a ~4M-parameter OPT trained by ``scripts/train_demo_model.py`` on the Python
documentation: it writes English about Python, not reliable answers. ``opt-tpu-tui``
uses it when neither ``--model`` nor a last-used model is given, and says so.
"""

from __future__ import annotations

from pathlib import Path

DEMO_MODEL_DIR = Path(__file__).resolve().parent / "demo_model"
DEMO_NAME = "demo"  # ``--model demo`` opens it, whatever model was used last
DEMO_NOTICE = (
    "Using the built-in demo model: a tiny OPT trained on the Python docs, for trying the app out; it writes "
    "Python-flavoured English, not reliable answers. Pass --model DIR to chat with a real OPT checkpoint "
    "(a Hugging Face OPT directory or a converted bmodel directory)."
)


def is_demo_model(path: Path) -> bool:
    return Path(path).resolve() == DEMO_MODEL_DIR
