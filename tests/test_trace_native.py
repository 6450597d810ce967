"""The compiled traceparent check (``instrument/core/_trace.c``) against trace.py's own.

Both answer this request's ``traceparent`` and the caller's trace id; span ids and new
traces are random, so the two are compared with those parts checked for shape and set
aside. Values are generated around the valid form (one character changed, cut, grown,
ids zeroed, upper case, other versions) and at random.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instrument.core import trace

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _norm(result: tuple[Any, Any], as_bytes: bool) -> tuple[str, Any]:
    tp, caller = result
    assert tp.__class__ is (bytes if as_bytes else str)
    text = tp.decode("ascii") if as_bytes else tp
    parsed = trace.parse(text)
    assert parsed is not None, text  # always a valid traceparent of its own
    if caller is None:
        return "a new trace", None
    assert parsed[0] == caller
    assert text[:36] == f"00-{caller}-" and len(text) == 55
    return text[:36] + "<span>" + text[52:], caller


def test_the_compiled_check_is_built_and_used() -> None:
    assert trace.fast_continued is not trace.continued, "instrument/core/_trace.c not compiled"
    assert trace.fast_continued_bytes is not trace.continued_bytes


_chars = st.sampled_from("0123456789abcdefABCDEF-xz \t\x00é")


@st.composite
def _values(draw: Any) -> str:
    how = draw(st.sampled_from(["valid", "one", "cut", "grow", "zero-trace", "zero-span",
                                "version", "upper", "random"]))
    value = VALID
    if how == "one":
        i = draw(st.integers(0, len(VALID) - 1))
        value = VALID[:i] + draw(_chars) + VALID[i + 1:]
    elif how == "cut":
        value = VALID[:draw(st.integers(0, len(VALID) - 1))]
    elif how == "grow":
        value = VALID + draw(st.text(_chars, min_size=1, max_size=8))
    elif how == "zero-trace":
        value = VALID[:3] + "0" * 32 + VALID[35:]
    elif how == "zero-span":
        value = VALID[:36] + "0" * 16 + VALID[52:]
    elif how == "version":
        value = draw(st.sampled_from(["01", "cc", "ff", "0a"])) + VALID[2:]
    elif how == "upper":
        value = VALID.upper()
    elif how == "random":
        value = draw(st.text(max_size=70))
    return value


@settings(max_examples=1500, deadline=None)
@given(value=_values())
def test_the_compiled_check_answers_as_trace_py_does(value: str) -> None:
    trace.use()
    assert _norm(trace.fast_continued(value), False) == _norm(trace.continued(value), False)
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "surrogatepass")
    assert (_norm(trace.fast_continued_bytes(raw), True)
            == _norm(trace.continued_bytes(raw), True))


def test_a_valid_header_continues_with_a_fresh_span_each_time() -> None:
    trace.use()
    spans = {trace.fast_continued(VALID)[0][36:52] for _ in range(200)}
    spans |= {trace.fast_continued_bytes(VALID.encode())[0][36:52].decode() for _ in range(200)}
    assert len(spans) == 400
    assert "0" * 16 not in spans


def _fresh_chunks(*chunks: bytes) -> None:
    """Only ``chunks`` ahead, and no compiled module holding one of its own."""
    from instrument.adapters import _asgi, _wsgi

    trace.SPAN_CHUNKS.clear()
    trace.SPAN_CHUNKS.extend(chunks)
    for mod in (trace._compiled, _wsgi, _asgi):
        mod.forget_spans()


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
def test_with_no_span_minted_ahead_one_is_minted_here(as_bytes: bool) -> None:
    _fresh_chunks()
    value: Any = VALID.encode() if as_bytes else VALID
    fn = trace.fast_continued_bytes if as_bytes else trace.fast_continued
    tp, caller = fn(value)
    assert caller == VALID[3:35]
    assert _norm((tp, caller), as_bytes)[0] == VALID[:36] + "<span>" + VALID[52:]
    assert not trace.SPAN_CHUNKS  # a chunk minted for the module, none taken from ahead


def test_span_ids_are_read_from_the_chunks_minted_ahead_in_order() -> None:
    a, b, c = b"0123456789abcdef", b"fedcba9876543210", b"00000000000000a1"
    _fresh_chunks(a + b"0" * 16 + b, c)  # an all-zero id in a chunk is skipped
    spans = [trace.fast_continued(VALID)[0][36:52] for _ in range(3)]
    assert spans == [a.decode(), b.decode(), c.decode()]
    assert not trace.SPAN_CHUNKS
    assert len(trace.fast_continued(VALID)[0]) == 55  # then one is minted


def test_top_up_keeps_chunks_of_random_hex_ahead() -> None:
    trace.use()
    trace.SPAN_CHUNKS.clear()
    trace.top_up()
    assert len(trace.SPAN_CHUNKS) == trace._CHUNKS_AHEAD
    assert len({*trace.SPAN_CHUNKS}) == trace._CHUNKS_AHEAD
    for chunk in trace.SPAN_CHUNKS:
        assert len(chunk) == 16 * trace._CHUNK and re.fullmatch(rb"[0-9a-f]+", chunk)


def test_a_forked_child_never_hands_out_its_parents_span_ids() -> None:
    """The chunk a compiled module holds at fork() is the parent's: the child drops it."""
    _fresh_chunks()
    trace.fast_continued(VALID)  # the parent now holds a chunk with 255 ids left
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next 100 span ids, to the parent
        try:
            spans = " ".join(trace.fast_continued(VALID)[0][36:52] for _ in range(100))
            os.write(write, spans.encode())
        finally:
            os._exit(0)
    os.close(write)
    theirs = b""
    while chunk := os.read(read, 65536):
        theirs += chunk
    os.close(read)
    os.waitpid(pid, 0)
    ours = {trace.fast_continued(VALID)[0][36:52] for _ in range(100)}
    child = set(theirs.decode().split())
    assert len(child) == 100 and len(ours) == 100
    assert not ours & child
