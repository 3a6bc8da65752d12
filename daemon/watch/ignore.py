"""Which project paths the file watcher ignores: gitignore-style rules and editor temp files.

Ignored paths (build output, editor swap files) must never trigger a rebuild, and the watcher
must not spend inotify watches on ignored directories.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

__all__ = ["ALWAYS_IGNORED_DIRS", "IgnoreRules", "is_editor_temp"]

# VCS metadata changes on every commit or status call; rebuilding on it would be noise.
ALWAYS_IGNORED_DIRS: frozenset[str] = frozenset({".git", ".hg", ".svn", ".jj"})

# Bounded so a long-lived daemon on a huge tree cannot grow without limit; clearing when full
# is crude but the hit rate stays high because siblings share their parent directories.
_DIR_CACHE_MAX = 4096

# fmt: off
_POSIX_CLASSES = {"alnum": "a-zA-Z0-9", "alpha": "a-zA-Z", "blank": " \\t", "digit": "0-9",
                  "lower": "a-z", "space": "\\s", "upper": "A-Z", "xdigit": "0-9A-Fa-f"}
# fmt: on


class _Rule(NamedTuple):
    regex: re.Pattern[str]
    negated: bool
    dir_only: bool


def _trim_trailing_spaces(line: str) -> str:
    stripped = line.rstrip(" ")
    # An odd run of backslashes escapes the first trailing space: "a\ " keeps it.
    if len(stripped) < len(line) and (len(stripped) - len(stripped.rstrip("\\"))) % 2:
        return stripped + " "
    return stripped


def _bracket(seg: str, start: int) -> tuple[str, int] | None:
    """The regex of the class opening at seg[start] and the index after it; None if unclosed."""
    j = start + 1
    negate = j < len(seg) and seg[j] in "!^"
    if negate:
        j += 1
    items: list[str] = []
    first = True
    while j < len(seg):
        char = seg[j]
        if char == "]" and not first:
            body = "".join(items)
            # A class must never match "/", or "*.[!x]" could span directories.
            return ("[^/" + body + "]" if negate else "[" + body + "]"), j + 1
        first = False
        if seg.startswith("[:", j):
            end = seg.find(":]", j + 2)
            if end != -1 and seg[j + 2 : end] in _POSIX_CLASSES:
                items.append(_POSIX_CLASSES[seg[j + 2 : end]])
                j = end + 2
                continue
        escaped = char == "\\" and j + 1 < len(seg)
        if escaped:
            j += 1
            char = seg[j]
        is_range = (
            not escaped and char == "-" and bool(items) and j + 1 < len(seg) and seg[j + 1] != "]"
        )
        items.append("-" if is_range else re.escape(char))
        j += 1
    return None


def _segment(seg: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(seg):
        char = seg[i]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            cls = _bracket(seg, i)
            if cls is None:
                raise ValueError("unclosed [")  # git never matches such a pattern
            out.append(cls[0])
            i = cls[1]
            continue
        elif char == "\\":
            if i + 1 == len(seg):
                raise ValueError("trailing backslash")  # likewise never matches in git
            i += 1
            out.append(re.escape(seg[i]))
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


def _compile(line: str) -> _Rule | None:
    """One gitignore line to a rule matching paths relative to the ignore file's directory."""
    if not line or line.startswith("#"):
        return None
    line = _trim_trailing_spaces(line)
    negated = line.startswith("!")
    if negated:
        line = line[1:]
    dir_only = line.endswith("/")
    if dir_only:
        line = line[:-1]
    # Only a slash before the end anchors: "target/" still matches at any depth.
    anchored = "/" in line
    line = line.removeprefix("/")
    if not line:
        return None
    segments = line.split("/")
    regex = "" if anchored else "(?:.*/)?"
    need_sep = False  # whether the next plain segment needs a "/" before it
    try:
        for index, seg in enumerate(segments):
            sep = "/" if need_sep else ""
            if seg == "**":
                regex += sep + (".*" if index == len(segments) - 1 else "(?:.*/)?")
                need_sep = False
            else:
                regex += sep + _segment(seg)
                need_sep = True
        return _Rule(re.compile(regex, re.DOTALL), negated, dir_only)
    except (ValueError, re.error):  # e.g. "[z-a]": git just never matches an invalid pattern
        return None


def _union(rules: list[_Rule]) -> re.Pattern[str] | None:
    if not rules:
        return None
    return re.compile("|".join(f"(?:{r.regex.pattern})" for r in rules), re.DOTALL)


class _RuleSet:
    """All rules whose patterns are relative to one directory."""

    __slots__ = ("any_dir", "any_file", "rules", "sources")

    def __init__(self) -> None:
        self.sources: dict[str, list[_Rule]] = {}
        self.rules: list[_Rule] = []
        self.any_dir: re.Pattern[str] | None = None
        self.any_file: re.Pattern[str] | None = None

    def rebuild(self) -> None:
        self.rules = [rule for rules in self.sources.values() for rule in rules]
        # Most paths match nothing; one combined regex rejects them without a Python loop.
        self.any_dir = _union(self.rules)
        self.any_file = _union([rule for rule in self.rules if not rule.dir_only])

    def verdict(self, rel: str, is_dir: bool) -> bool | None:
        quick = self.any_dir if is_dir else self.any_file
        if quick is None or quick.fullmatch(rel) is None:
            return None
        for rule in reversed(self.rules):  # the last matching rule wins
            if (is_dir or not rule.dir_only) and rule.regex.fullmatch(rel) is not None:
                return not rule.negated
        return None


class IgnoreRules:
    """gitignore-style rules of one project tree."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._prefix = str(root).rstrip(os.sep) + os.sep
        self._sets: dict[str, _RuleSet] = {}  # "" is the root; otherwise a "/"-joined rel dir
        self._dir_cache: dict[str, bool] = {}

    @classmethod
    def load(cls, root: Path) -> IgnoreRules:
        """Rules from root/.gitignore, root/.ignore and root/.git/info/exclude (may be missing)."""
        rules = cls(root)
        # Lowest precedence first, as git (exclude < .gitignore) and ripgrep (.gitignore < .ignore).
        for path in (root / ".git" / "info" / "exclude", root / ".gitignore", root / ".ignore"):
            rules._read(path, "")
        return rules

    def add_file(self, path: Path) -> None:
        """Add the rules of a nested .gitignore or .ignore file.

        Its patterns are relative to path.parent. Unreadable/missing file: ignored silently.
        Adding the same file again replaces its earlier rules (or drops them if it is gone).
        """
        base = "" if path.parent == self.root else self._relative(path.parent)
        if base is not None:
            self._read(path, base)

    def is_ignored(self, path: Path, is_dir: bool) -> bool:
        """True if the rules ignore path or any of its parent directories (below root).

        path is absolute. Paths outside root (and root itself): False, other rule sets
        handle them. Directories named in ALWAYS_IGNORED_DIRS are ignored too.
        """
        rel = self._relative(path)
        if rel is None:
            return False
        parent, _, name = rel.rpartition("/")
        # Parents first: git cannot re-include anything inside an excluded directory.
        if parent and self._dir_excluded(parent):
            return True
        if is_dir and name in ALWAYS_IGNORED_DIRS:
            return True
        return self._match(rel, is_dir)

    def _read(self, path: Path, base: str) -> None:
        try:
            text: str | None = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = None
        key = str(path)
        ruleset = self._sets.get(base)
        if text is None:
            # Re-adding a file that has since disappeared drops its old rules.
            if ruleset is None or ruleset.sources.pop(key, None) is None:
                return
        else:
            # read_text's universal newlines already drop the "\r" of CRLF files, as git does.
            compiled = [rule for rule in map(_compile, text.split("\n")) if rule is not None]
            if ruleset is None:
                ruleset = self._sets[base] = _RuleSet()
            # Re-reading an edited file keeps its original precedence slot.
            ruleset.sources[key] = compiled
        ruleset.rebuild()
        if not ruleset.rules:
            del self._sets[base]
        self._dir_cache.clear()

    def _relative(self, path: Path) -> str | None:
        """The "/"-joined path below root, or None for root itself and anything outside it."""
        text = str(path)
        if not text.startswith(self._prefix) or len(text) == len(self._prefix):
            return None
        rel = text[len(self._prefix) :]
        return rel.replace(os.sep, "/") if os.sep != "/" else rel

    def _dir_excluded(self, rel_dir: str) -> bool:
        cached = self._dir_cache.get(rel_dir)
        if cached is not None:
            return cached
        parent, _, name = rel_dir.rpartition("/")
        result = (
            (bool(parent) and self._dir_excluded(parent))
            or name in ALWAYS_IGNORED_DIRS
            or self._match(rel_dir, True)
        )
        if len(self._dir_cache) >= _DIR_CACHE_MAX:
            self._dir_cache.clear()
        self._dir_cache[rel_dir] = result
        return result

    def _match(self, rel: str, is_dir: bool) -> bool:
        # Deepest ignore file first: its rules override those of the directories above it.
        end = len(rel)
        while end > 0:
            end = rel.rfind("/", 0, end)
            base, sub = ("", rel) if end < 0 else (rel[:end], rel[end + 1 :])
            ruleset = self._sets.get(base)
            if ruleset is not None:
                verdict = ruleset.verdict(sub, is_dir)
                if verdict is not None:
                    return verdict
        return False


_TEMP_SUFFIXES = (".swp", ".swo", ".swx", ".swn", "~", ".kate-swp", "___jb_tmp___", "___jb_old___")


def is_editor_temp(name: str) -> bool:
    """True for editor swap/backup/lock/temp file names (basename only).

    vim .swp/.swo/.swx/.swn (including '.name.swp' forms), vim's '4913' probe file, names
    ending in '~', emacs '#name#' and '.#name', '.name.kate-swp', JetBrains '___jb_tmp___' /
    '___jb_old___' suffixes, '.DS_Store', LibreOffice '.~lock.*#'.
    """
    if name in ("4913", ".DS_Store") or name.endswith(_TEMP_SUFFIXES):
        return True
    if name.startswith(".#") or (len(name) > 1 and name[0] == "#" and name[-1] == "#"):
        return True
    return name.startswith(".~lock.") and name.endswith("#")
