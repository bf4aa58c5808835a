"""The demo model's training text: the Python documentation, reshaped as chat transcripts.

Source: the reStructuredText sources of the Python 3.11 documentation as Debian's
``python3.11-doc`` package installs them (``/usr/share/doc/python3.11/html/_sources``),
under the Python Software Foundation License Version 2 (see the package's copyright
file). FAQ entries are already questions and answers; every other section becomes an
exchange whose question is made from its heading. Each sample is written in the chat
transcript format of ``opt_tpu_tui.chat`` so the model learns to answer after
``Assistant:`` and to end its reply.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator
from pathlib import Path

from opt_tpu_tui.chat import DEFAULT_PREAMBLE, Turn, transcript

DOCS = Path("/usr/share/doc/python3.11/html/_sources")
HEADING_RULE = re.compile(r"^([=\-~^\"'`#*+])\1{2,}\s*$")
ROLE = re.compile(r":[\w:.-]+:`~?!?([^`<]*?)(?:\s*<[^>]*>)?`")
LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`_+")
INLINE = re.compile(r"``([^`]+)``|\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*")
ASK = ("What is {}?", "Tell me about {}.", "Can you explain {}?", "What should I know about {}?", "{}?")
MORE = ("Tell me more.", "Go on.", "What else?", "Can you say more about that?")
GREETINGS = [
    ("Hello", "Hello! I am a small demonstration model. Ask me about Python."),
    ("Hi", "Hi! What would you like to know about Python?"),
    ("Hello, who are you?", "I am a tiny language model trained on the Python documentation."),
    ("Thank you", "You are welcome."),
]


def clean(lines: list[str]) -> str:
    """reST to plain prose: drop directives, code blocks and markup, keep the sentences."""
    out: list[str] = []
    skipping_indent = None
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if skipping_indent is not None:
            if stripped and indent <= skipping_indent:
                skipping_indent = None
            else:
                continue
        if stripped.startswith(".. ") or stripped.endswith("::") and not stripped[:-2].strip():
            skipping_indent = indent  # a directive or a literal block: skip its indented body
            continue
        if stripped.endswith("::"):
            line = line.rstrip()[:-1]  # "as follows::" -> "as follows:", the block after it is skipped
            skipping_indent = indent
        if stripped.startswith((">>>", "...", "|")) or HEADING_RULE.match(stripped):
            continue
        out.append(line.strip())
    text = "\n".join(out)
    text = LINK.sub(r"\1", text)
    text = ROLE.sub(r"\1", text)
    text = INLINE.sub(lambda m: next(g for g in m.groups() if g), text)
    text = re.sub(r"[ \t]+", " ", text)
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    return "\n\n".join(p for p in paragraphs if len(p) > 40 and not p.startswith(("*", "-", "+")))


def sections(path: Path) -> Iterator[tuple[str, str]]:
    """(heading, cleaned body) for every section of one reST file."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    heading, body = "", []
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and HEADING_RULE.match(nxt.strip()) and len(nxt.strip()) >= len(line.strip()) - 1:
            if heading:
                yield heading, clean(body)
            heading, body = ROLE.sub(r"\1", line.strip()).replace("``", "").strip(), []
        else:
            body.append(line)
    if heading:
        yield heading, clean(body)


def chunks_of(body: str, limit: int = 1000) -> list[str]:
    """A section's paragraphs grouped into answers of about ``limit`` characters, cut at sentence ends."""
    out, text = [], ""
    for paragraph in body.split("\n\n"):
        if text and len(text) + len(paragraph) > limit:
            out.append(text)
            text = ""
        text = f"{text} {paragraph}".strip()
        while len(text) > limit * 1.5:
            cut = text.rfind(". ", 0, limit)
            cut = cut + 1 if cut > 100 else limit
            out.append(text[:cut].strip())
            text = text[cut:].strip()
    return out + [text] if text else out


def question_of(heading: str, rng: random.Random) -> str:
    if heading.endswith("?"):
        return heading
    return rng.choice(ASK).format(re.sub(r"^[\d.]+\s+", "", heading).rstrip(".:"))


def samples(seed: int = 0) -> tuple[list[str], list[str]]:
    """Training and held-out transcripts; a file's samples all go to one side (1 file in 20 held out)."""
    rng = random.Random(seed)
    train, held_out = [], []
    for path in sorted(DOCS.rglob("*.rst.txt")):
        pairs = []
        for heading, body in sections(path):
            if len(body) > 80:
                answers = chunks_of(body)
                pairs.append((question_of(heading, rng), answers[0]))
                pairs += [(rng.choice(MORE), answer) for answer in answers[1:3]]
        held = int(hashlib.sha256(path.name.encode()).hexdigest(), 16) % 20 == 0
        for start in range(0, len(pairs), 3):  # up to three exchanges per transcript
            turns = [Turn(q, a) for q, a in pairs[start : start + 3]]
            text = transcript(DEFAULT_PREAMBLE, turns[:-1], turns[-1].user) + " " + turns[-1].assistant
            (held_out if held else train).append(text)
    for user, assistant in GREETINGS:
        train.extend([transcript(DEFAULT_PREAMBLE, [], user) + " " + assistant] * 5)
    rng.shuffle(train)
    return train, held_out


if __name__ == "__main__":
    train, held_out = samples()
    print(len(train), "training transcripts,", sum(map(len, train)), "characters;", len(held_out), "held out")
    print(train[0][:1200], "\n---\n", held_out[0][:800])
