#!/usr/bin/env python3
"""Fails when a test waits on the wall clock.

Rules (benchmarks under `benches/` are exempt):
- `std::thread::sleep` / `thread::sleep(` anywhere in Rust code;
- a `#[tokio::test]` whose body sleeps (`sleep(` / `sleep_until(`) without `start_paused = true`;
- a `#[test]` whose body sleeps without building its runtime with `.start_paused(true)`.
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
THREAD_SLEEP = re.compile(r"\bthread::sleep\s*\(")
TOKIO_SLEEP = re.compile(r"\bsleep(_until)?\s*\(")
TEST_ATTR = re.compile(r"#\[(tokio::test[^\]]*|test)\]")


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def body_after(text: str, start: int) -> str:
    """The brace-balanced body of the first `fn` after `start`."""
    fn = text.find("fn ", start)
    open_brace = text.find("{", fn)
    if fn < 0 or open_brace < 0:
        return ""
    depth = 0
    for index in range(open_brace, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[open_brace : index + 1]
    return text[open_brace:]


def main() -> int:
    problems = []
    for path in sorted(ROOT.glob("crates/**/*.rs")):
        relative = path.relative_to(ROOT)
        if "benches" in relative.parts or "target" in relative.parts:
            continue
        text = strip_comments(path.read_text(encoding="utf-8"))
        for match in THREAD_SLEEP.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            problems.append(f"{relative}:{line}: std::thread::sleep blocks on the wall clock")
        for match in TEST_ATTR.finditer(text):
            attribute = match.group(1)
            body = body_after(text, match.end())
            if not TOKIO_SLEEP.search(body):
                continue
            paused = "start_paused = true" in attribute or ".start_paused(true)" in body
            if not paused:
                line = text.count("\n", 0, match.start()) + 1
                problems.append(f"{relative}:{line}: a test sleeps but does not run on tokio's paused clock")
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} test(s) wait on the wall clock; use #[tokio::test(start_paused = true)]")
        return 1
    print("no test waits on the wall clock")
    return 0


if __name__ == "__main__":
    sys.exit(main())
