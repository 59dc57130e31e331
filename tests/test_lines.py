"""LineFramer: bytes from a process → console lines (pure, no I/O)."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from manman.worker.console.lines import MAX_LINE_BYTES, LineFramer


def run(chunks: list[bytes], **kw: object) -> list[str]:
    """Every line a framer emits for `chunks`, then EOF."""
    framer = LineFramer(**kw)  # type: ignore[arg-type]
    out: list[str] = []
    for chunk in chunks:
        out.extend(framer.feed(chunk))
    out.extend(framer.flush())
    return out


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def reference(data: bytes, *, cr_breaks: bool = False) -> list[str]:
    """What the whole input should frame into when no line is over the limit."""
    if cr_breaks:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    parts = data.split(b"\n")
    if parts[-1] == b"":
        parts.pop()  # a final '\n' ends the last line; it does not open an empty one
    lines = [p.decode("utf-8", "replace") for p in parts]
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def greedy_pieces(line: str, limit: int) -> list[str]:
    """A line cut into the longest pieces of ≤ limit UTF-8 bytes (whole characters)."""
    pieces: list[str] = []
    cur, size = "", 0
    for ch in line:
        n = utf8_len(ch)
        if size + n > limit:
            pieces.append(cur)
            cur, size = "", 0
        cur += ch
        size += n
    pieces.append(cur)
    return pieces


# -- splitting ----------------------------------------------------------------------------


def test_module_limit_is_64_kib() -> None:
    assert MAX_LINE_BYTES == 64 * 1024


def test_splits_on_newline_in_order() -> None:
    f = LineFramer()
    assert f.feed(b"one\ntwo\nthree\n") == ["one", "two", "three"]
    assert f.flush() == []


def test_partial_line_waits_for_its_newline() -> None:
    f = LineFramer()
    assert f.feed(b"hel") == []
    assert f.feed(b"lo wor") == []
    assert f.feed(b"ld\nnext") == ["hello world"]
    assert f.feed(b"\n") == ["next"]
    assert f.flush() == []


def test_empty_feed_and_empty_flush() -> None:
    f = LineFramer()
    assert f.feed(b"") == []
    assert f.flush() == []
    assert f.feed(b"") == []


def test_empty_lines_are_preserved() -> None:
    assert run([b"\n"]) == [""]
    assert run([b"a\n\n\nb\n"]) == ["a", "", "", "b"]
    assert run([b"\n", b"\n", b"x\n", b"\n"]) == ["", "", "x", ""]
    assert run([b"\r\n\r\n"]) == ["", ""]


def test_trailing_cr_is_stripped() -> None:
    assert run([b"dos line\r\nnext\r\n"]) == ["dos line", "next"]
    # the \r and the \n arriving in different reads
    assert run([b"dos line\r", b"\nx\n"]) == ["dos line", "x"]


def test_only_a_line_final_cr_is_stripped_without_cr_breaks() -> None:
    # a \r inside a line is kept; only one \r at the end goes
    assert run([b"a\rb\n"]) == ["a\rb"]
    assert run([b"a\r\r\n"]) == ["a\r"]


def test_flush_returns_the_unterminated_rest_once() -> None:
    f = LineFramer()
    assert f.feed(b"done\npartial") == ["done"]
    assert f.flush() == ["partial"]
    assert f.flush() == []
    # the framer is usable again after a flush
    assert f.feed(b"again\n") == ["again"]


def test_flush_strips_a_trailing_cr() -> None:
    f = LineFramer()
    assert f.feed(b"prompt> \r") == []
    assert f.flush() == ["prompt> "]


def test_flush_of_a_lone_cr_is_one_empty_line() -> None:
    f = LineFramer()
    f.feed(b"\r")
    assert f.flush() == [""]


# -- cr_breaks (steamcmd progress) ---------------------------------------------------------


def test_cr_breaks_lone_cr_ends_a_line() -> None:
    f = LineFramer(cr_breaks=True)
    assert f.feed(b"progress: 10\rprogress: 20\rprogress: 30") == [
        "progress: 10", "progress: 20"]
    assert f.flush() == ["progress: 30"]


def test_cr_breaks_crlf_is_one_line_end() -> None:
    assert run([b"a\r\nb\r\n"], cr_breaks=True) == ["a", "b"]
    assert run([b"a\r\rb\n"], cr_breaks=True) == ["a", "", "b"]


def test_without_cr_breaks_lone_cr_does_not_end_a_line() -> None:
    assert run([b"progress: 10\rprogress: 20\n"]) == ["progress: 10\rprogress: 20"]


def test_cr_breaks_steamcmd_progress() -> None:
    out = run([b" Update state (0x61) downloading, progress: 45.21 (1234567 / 2730000)\r",
               b" Update state (0x61) downloading, progress: 90.00 (2457000 / 2730000)\r\n",
               b"Success! App '730' fully installed.\n"], cr_breaks=True)
    assert out == [
        " Update state (0x61) downloading, progress: 45.21 (1234567 / 2730000)",
        " Update state (0x61) downloading, progress: 90.00 (2457000 / 2730000)",
        "Success! App '730' fully installed.",
    ]


def test_cr_breaks_crlf_split_across_reads_is_one_line_end() -> None:
    assert run([b"a\r", b"\nb\n"], cr_breaks=True) == ["a", "b"]


# -- UTF-8 --------------------------------------------------------------------------------


def test_utf8_decoded() -> None:
    assert run(["héllo wörld ✓ 𝄞\n".encode()]) == ["héllo wörld ✓ 𝄞"]


def test_invalid_utf8_replaced() -> None:
    assert run([b"bad \xff\xfe byte\n"]) == ["bad \ufffd\ufffd byte"]
    # a truncated sequence right before the newline
    assert run([b"cut \xe2\x82\n"]) == ["cut \ufffd"]
    # at EOF too
    assert run([b"tail \xf0\x9f"]) == ["tail \ufffd"]


@pytest.mark.parametrize("char", ["é", "✓", "𝄞"])
def test_multibyte_char_split_across_feeds(char: str) -> None:
    raw = f"a{char}b\n".encode()
    for cut in range(1, len(raw)):
        assert run([raw[:cut], raw[cut:]]) == [f"a{char}b"], cut
    # one byte per read
    assert run([bytes([b]) for b in raw]) == [f"a{char}b"]


def test_multibyte_char_split_before_flush() -> None:
    f = LineFramer()
    assert f.feed("x✓".encode()[:-1]) == []
    assert f.feed("x✓".encode()[-1:]) == []
    assert f.flush() == ["x✓"]


# -- long lines ---------------------------------------------------------------------------


def test_line_of_exactly_the_limit_is_not_split() -> None:
    line = b"x" * MAX_LINE_BYTES
    assert run([line + b"\n"]) == [line.decode()]
    assert run([line]) == [line.decode()]  # unterminated, at EOF
    f = LineFramer()
    assert f.feed(line) == []  # not over the limit yet: keeps waiting for its newline
    assert f.feed(b"\n") == [line.decode()]


def test_terminated_long_line_is_split_into_limit_sized_pieces() -> None:
    n = MAX_LINE_BYTES * 2 + 100
    out = run([b"y" * n + b"\nnext\n"])
    assert [len(p) for p in out] == [MAX_LINE_BYTES, MAX_LINE_BYTES, 100, 4]
    assert out[-1] == "next"


def test_unterminated_long_data_emitted_as_it_comes() -> None:
    f = LineFramer()
    out = f.feed(b"z" * (MAX_LINE_BYTES + 10))
    assert out == ["z" * MAX_LINE_BYTES]  # a full piece leaves at once, the rest waits
    assert f.feed(b"z" * 10) == []
    assert f.feed(b"\n") == ["z" * 20]


def test_unterminated_long_data_many_small_reads() -> None:
    f = LineFramer()
    out: list[str] = []
    for _ in range(3 * 64):
        out.extend(f.feed(b"k" * 1024))  # 3 × 64 KiB in 1 KiB reads, no newline
    assert out == ["k" * MAX_LINE_BYTES] * 2
    assert f.flush() == ["k" * MAX_LINE_BYTES]


def test_unterminated_long_data_then_flush() -> None:
    f = LineFramer()
    out = f.feed(b"q" * (MAX_LINE_BYTES * 3 + 5))
    assert out == ["q" * MAX_LINE_BYTES] * 3
    assert f.flush() == ["q" * 5]


@pytest.mark.parametrize("char", ["é", "✓", "𝄞"])
@pytest.mark.parametrize("terminated", [True, False])
def test_long_line_split_never_breaks_a_utf8_sequence(char: str, terminated: bool) -> None:
    for offset in range(4):  # shift the char grid against the limit
        text = "a" * offset + char * (MAX_LINE_BYTES // len(char.encode()) + 50)
        raw = text.encode() + (b"\n" if terminated else b"")
        out = run([raw])
        assert "".join(out) == text, offset
        assert "\ufffd" not in "".join(out)
        assert all(utf8_len(p) <= MAX_LINE_BYTES for p in out)
        assert len(out) == 2
        assert out == greedy_pieces(text, MAX_LINE_BYTES)


@pytest.mark.parametrize("char", ["é", "✓", "𝄞"])
def test_long_unterminated_multibyte_fed_in_odd_chunks(char: str) -> None:
    text = char * (MAX_LINE_BYTES // len(char.encode()) * 2 + 7)
    raw = text.encode()
    chunks = [raw[i:i + 4093] for i in range(0, len(raw), 4093)]
    out = run(chunks)
    assert "".join(out) == text
    assert "\ufffd" not in "".join(out)
    assert all(utf8_len(p) <= MAX_LINE_BYTES for p in out)
    assert out == greedy_pieces(text, MAX_LINE_BYTES)


def test_long_line_among_short_ones_in_one_read() -> None:
    long = "L" * (MAX_LINE_BYTES + 1)
    out = run([b"a\n" + long.encode() + b"\nb\n\n"])
    assert out == ["a", "L" * MAX_LINE_BYTES, "L", "b", ""]


def test_long_line_with_crlf_is_stripped_then_split() -> None:
    out = run([b"w" * (MAX_LINE_BYTES + 3) + b"\r\n"])
    assert out == ["w" * MAX_LINE_BYTES, "www"]


def test_small_max_line() -> None:
    assert run([b"abcdefghij\n"], max_line=4) == ["abcd", "efgh", "ij"]
    assert run([b"abcdefghij"], max_line=4) == ["abcd", "efgh", "ij"]
    assert run([b"abcd\n"], max_line=4) == ["abcd"]


def test_line_of_exactly_the_limit_with_crlf_split_across_reads() -> None:
    line = b"x" * MAX_LINE_BYTES
    assert run([line + b"\r", b"\n"]) == [line.decode()]


@pytest.mark.parametrize("chunks", [
    [b"\xff" * (MAX_LINE_BYTES + 1)],             # unterminated: _cut_long
    [b"\xff" * (MAX_LINE_BYTES // 2) + b"\n"],    # terminated, under the raw limit
])
def test_pieces_of_invalid_utf8_stay_within_the_limit(chunks: list[bytes]) -> None:
    out = run(chunks)
    assert all(utf8_len(p) <= MAX_LINE_BYTES for p in out)


def test_terminated_long_invalid_utf8_pieces_stay_within_the_limit() -> None:
    out = run([b"\xff" * (MAX_LINE_BYTES + 1) + b"\n"])
    assert all(utf8_len(p) <= MAX_LINE_BYTES for p in out)
    assert "".join(out) == "\ufffd" * (MAX_LINE_BYTES + 1)


# -- volume -------------------------------------------------------------------------------


def test_huge_batch_of_small_lines() -> None:
    n = 100_000
    data = b"".join(b"line %d\n" % i for i in range(n))
    f = LineFramer()
    out = f.feed(data)
    assert len(out) == n
    assert out[0] == "line 0" and out[-1] == f"line {n - 1}"
    assert out[12345] == "line 12345"
    assert f.flush() == []


def test_huge_batch_in_odd_chunks() -> None:
    n = 20_000
    data = b"".join(b"row %d\r\n" % i for i in range(n))
    chunks = [data[i:i + 777] for i in range(0, len(data), 777)]
    assert run(chunks) == [f"row {i}" for i in range(n)]


# -- properties ---------------------------------------------------------------------------

_alphabet = st.sampled_from([b"a", b"b", b"\n", b"\r", b"\xc3\xa9", b"\xe2\x9c\x93",
                             b"\xf0\x9d\x84\x9e", b"\xff", b"\xc3", b"\xe2\x9c", b"\x80"])
_raw = st.lists(_alphabet, max_size=80).map(b"".join)


@st.composite
def _chunked(draw: st.DrawFn, data: st.SearchStrategy[bytes]) -> tuple[bytes, list[bytes]]:
    raw = draw(data)
    cuts = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=10)))
    bounds = [0, *cuts, len(raw)]
    return raw, [raw[a:b] for a, b in pairwise(bounds)]


@settings(max_examples=300, deadline=None, database=None)
@given(_chunked(_raw))
def test_property_chunking_does_not_change_the_lines(case: tuple[bytes, list[bytes]]) -> None:
    raw, chunks = case
    assert run(chunks) == reference(raw)


@settings(max_examples=300, deadline=None, database=None)
@given(_chunked(_raw))
def test_property_cr_breaks(case: tuple[bytes, list[bytes]]) -> None:
    raw, chunks = case
    # a \r\n split across reads is the known bug above
    reads = [c for c in chunks if c]
    assume(not any(a.endswith(b"\r") and b.startswith(b"\n") for a, b in pairwise(reads)))
    assert run(chunks, cr_breaks=True) == reference(raw, cr_breaks=True)


_text = st.text(st.sampled_from("ab\né✓𝄞"), max_size=60)


@settings(max_examples=300, deadline=None, database=None)
@given(_text.flatmap(lambda t: _chunked(st.just(t.encode()))), st.integers(4, 12))
def test_property_long_lines_cut_greedily_on_char_boundaries(
        case: tuple[bytes, list[bytes]], limit: int) -> None:
    raw, chunks = case
    expected = [p for line in reference(raw) for p in greedy_pieces(line, limit)]
    out = run(chunks, max_line=limit)
    assert out == expected
    assert all(utf8_len(p) <= limit for p in out)


@pytest.mark.parametrize("terminated", [True, False])
def test_stray_continuation_bytes_at_the_cut_do_not_cost_the_character_before(
        terminated: bool) -> None:
    # '€' is whole before the limit; the invalid bytes after it are not part of it
    raw = b"\x80\xe2\x82\xac\x80\x80zz" + (b"\n" if terminated else b"")
    out = run([raw], max_line=4)
    assert "".join(out) == "\ufffd€\ufffd\ufffdzz"
