"""Message ids (docs/internals.md "Ids", API.md section 2), through whichever core `catga._core` picked."""

import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import pytest

import catga
from catga import _core
from catga._core import DEFAULT_EPOCH_MS, IdGenerator

MAX_ID = 2**63 - 1


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def split(id_: int, layout: tuple[int, int, int] = (44, 8, 11)) -> tuple[int, int, int]:
    """(ms since epoch, worker, sequence) by the documented bit layout."""
    _, w, s = layout
    return id_ >> (w + s), (id_ >> s) & ((1 << w) - 1), id_ & ((1 << s) - 1)


def set_clock(gen: IdGenerator, unix_ms: int) -> None:
    """Point the generator's clock at `unix_ms`; only a core whose clock tests can set runs these."""
    try:
        setattr(gen, "_time_ns", lambda: unix_ms * 1_000_000)  # noqa: B010 - not part of the stub
    except AttributeError:
        pytest.skip("this core's id clock cannot be set by tests")


# -- the process-wide generator ------------------------------------------------------------------


def test_default_epoch_is_2024() -> None:
    assert DEFAULT_EPOCH_MS == 1704067200000
    assert datetime.fromtimestamp(DEFAULT_EPOCH_MS / 1000, tz=UTC) == datetime(2024, 1, 1, tzinfo=UTC)


def test_new_id_is_increasing_and_parses() -> None:
    before = now_ms()
    ids = [_core.new_id() for _ in range(1000)]
    after = now_ms()
    assert ids == sorted(set(ids))
    assert all(0 < i <= MAX_ID for i in ids)
    parts = _core.parse_id(ids[0])
    # The generator may borrow a millisecond or two ahead of the clock.
    assert before <= parts.timestamp_ms <= after + 5
    assert parts.worker_id == _core.default_generator().worker_id
    assert parts.datetime == datetime.fromtimestamp(parts.timestamp_ms / 1000, tz=UTC)
    assert parts.datetime.tzinfo is not None
    offset = parts.datetime.utcoffset()
    assert offset is not None
    assert offset.total_seconds() == 0


def test_default_generator_is_one_object_with_default_layout() -> None:
    gen = _core.default_generator()
    assert gen is _core.default_generator()
    assert gen.layout == (44, 8, 11)
    assert gen.epoch_ms == DEFAULT_EPOCH_MS
    assert 0 <= gen.worker_id <= 255
    assert _core.new_id() < gen.next() < _core.new_id()


def test_parse_id_time_is_close_to_now() -> None:
    parts = _core.parse_id(_core.new_id())
    assert abs(parts.timestamp_ms - time.time() * 1000) < 1000
    assert abs(parts.datetime.timestamp() - time.time()) < 1


# -- IdGenerator ---------------------------------------------------------------------------------


def test_defaults() -> None:
    gen = IdGenerator()
    assert (gen.worker_id, gen.epoch_ms, gen.layout) == (0, DEFAULT_EPOCH_MS, (44, 8, 11))
    assert isinstance(gen.layout, tuple)


def test_bit_layout_is_the_documented_one() -> None:
    gen = IdGenerator(worker_id=3, epoch_ms=1_000, layout=(44, 8, 11))
    parts = gen.parse((5 << 19) | (3 << 11) | 7)
    assert (parts.timestamp_ms, parts.worker_id, parts.sequence) == (1_005, 3, 7)
    i = gen.next()
    ms, worker, seq = split(i)
    assert worker == 3
    assert gen.parse(i).timestamp_ms == ms + 1_000
    assert gen.parse(i).sequence == seq


def test_next_is_strictly_increasing() -> None:
    gen = IdGenerator(worker_id=255)
    ids = [gen.next() for _ in range(20_000)]
    assert all(a < b for a, b in pairwise(ids))
    assert {split(i)[1] for i in ids} == {255}


def test_strictly_increasing_across_threads() -> None:
    gen = IdGenerator(worker_id=9)
    per_thread = 20_000
    results: list[list[int]] = [[] for _ in range(4)]
    start = threading.Barrier(4)

    def work(out: list[int]) -> None:
        start.wait()
        for _ in range(per_thread):
            out.append(gen.next())

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for out in results:
        assert len(out) == per_thread
        assert all(a < b for a, b in pairwise(out))
    everything = [i for out in results for i in out]
    assert len(set(everything)) == 4 * per_thread
    # Strictly increasing across threads: a later id is larger, so the union sorted by value is
    # consistent with each thread's own order (checked above) and has no duplicates (checked here).
    assert gen.next() > max(everything)


def test_next_many() -> None:
    gen = IdGenerator(worker_id=1)
    first = gen.next()
    batch = gen.next_many(5_000)
    assert len(batch) == 5_000
    assert first < batch[0]
    assert all(a < b for a, b in pairwise(batch))
    assert gen.next() > batch[-1]
    assert len(gen.next_many(1)) == 1


@pytest.mark.parametrize("n", [0, -1, -100])
def test_next_many_rejects_n_below_one(n: int) -> None:
    with pytest.raises(ValueError, match=f"`{n}`"):
        IdGenerator().next_many(n)


def test_custom_layout_and_epoch_round_trip() -> None:
    epoch = now_ms() - 1_000 * 86_400_000  # 1000 days ago
    gen = IdGenerator(worker_id=1023, epoch_ms=epoch, layout=(41, 10, 12))
    assert gen.layout == (41, 10, 12)
    assert gen.epoch_ms == epoch
    before = now_ms()
    ids = gen.next_many(3)
    after = now_ms()
    for i in ids:
        parts = gen.parse(i)
        assert parts.worker_id == 1023
        assert before <= parts.timestamp_ms <= after + 5
        ms, worker, seq = split(i, (41, 10, 12))
        assert (ms + epoch, worker, seq) == (parts.timestamp_ms, parts.worker_id, parts.sequence)


def test_worker_bits_may_be_zero() -> None:
    gen = IdGenerator(worker_id=0, layout=(52, 0, 11))
    a, b = gen.next(), gen.next()
    assert a < b
    assert gen.parse(b).worker_id == 0
    with pytest.raises(ValueError, match=r"worker id `1` does not fit in `0` bits"):
        IdGenerator(worker_id=1, layout=(52, 0, 11))


def test_sequence_overflow_borrows_the_next_millisecond() -> None:
    # 1 sequence bit: 2 ids per millisecond. 2000 ids span 1000 ms of id time; made far faster than
    # that, they can only have borrowed milliseconds instead of waiting for the clock.
    layout = (54, 8, 1)
    gen = IdGenerator(worker_id=5, layout=layout)
    started = time.monotonic()
    ids = [gen.next() for _ in range(1_000)] + gen.next_many(1_000)
    elapsed_ms = (time.monotonic() - started) * 1000
    assert all(a < b for a, b in pairwise(ids))
    timestamps = [gen.parse(i).timestamp_ms for i in ids]
    assert timestamps[-1] - timestamps[0] >= 999
    assert elapsed_ms < 500
    assert {gen.parse(i).sequence for i in ids} == {0, 1}
    assert {gen.parse(i).worker_id for i in ids} == {5}


def test_millisecond_that_does_not_fit_raises_overflow_error() -> None:
    # 20 timestamp bits hold ~17.5 minutes; the epoch is an hour ago.
    gen = IdGenerator(epoch_ms=now_ms() - 3_600_000, layout=(20, 8, 35))
    with pytest.raises(OverflowError, match=r"\(20, 8, 35\)"):
        gen.next()
    with pytest.raises(OverflowError, match=r"\(20, 8, 35\)"):
        gen.next_many(3)
    with pytest.raises(OverflowError):
        gen.next()


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ((40, 8, 11), r"id layout `\(40, 8, 11\)` must sum to 63 bits, not `59`"),
        ((44, 8, 12), r"`\(44, 8, 12\)` must sum to 63 bits, not `64`"),
        ((44, 8), r"`\(44, 8\)`"),
        ((44, 8, 11, 0), r"`\(44, 8, 11, 0\)`"),
        ("abc", r"`abc`"),
        ([44, 8, 11], r"`\[44, 8, 11\]`"),
        ((44.0, 8, 11), r"`\(44.0, 8, 11\)`"),
        ((50, -1, 14), r"`\(50, -1, 14\)`"),
        ((0, 8, 55), r"`\(0, 8, 55\)`"),
        ((55, 8, 0), r"`\(55, 8, 0\)`"),
    ],
)
def test_layout_validation(layout: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IdGenerator(layout=layout)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("worker_id", "layout", "message"),
    [
        (300, (44, 8, 11), r"worker id `300` does not fit in `8` bits \(0\.\.=255\)"),
        (256, (44, 8, 11), r"worker id `256` does not fit in `8` bits \(0\.\.=255\)"),
        (-1, (44, 8, 11), r"worker id `-1` does not fit in `8` bits \(0\.\.=255\)"),
        (512, (43, 9, 11), r"worker id `512` does not fit in `9` bits \(0\.\.=511\)"),
    ],
)
def test_worker_id_validation(worker_id: int, layout: tuple[int, int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IdGenerator(worker_id=worker_id, layout=layout)


def test_worker_id_edges_are_accepted() -> None:
    assert IdGenerator(worker_id=255).worker_id == 255
    assert IdGenerator(worker_id=511, layout=(43, 9, 11)).worker_id == 511


@pytest.mark.parametrize(
    ("kwargs", "value"),
    [({"worker_id": "3"}, "`3`"), ({"worker_id": 2.5}, r"`2\.5`"), ({"epoch_ms": "0"}, "`0`")],
)
def test_arguments_that_are_not_ints(kwargs: dict[str, object], value: str) -> None:
    with pytest.raises(ValueError, match=value):
        IdGenerator(**kwargs)  # type: ignore[arg-type]


def test_int_like_arguments_are_accepted() -> None:
    class Three:
        def __index__(self) -> int:
            return 3

    assert IdGenerator(worker_id=Three()).worker_id == 3  # type: ignore[arg-type]
    assert len(IdGenerator().next_many(Three())) == 3  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`2\.5`"):
        IdGenerator().next_many(2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`x`"):
        IdGenerator().parse("x")  # type: ignore[arg-type]


def test_epoch_validation() -> None:
    with pytest.raises(ValueError, match=r"`-1`"):
        IdGenerator(epoch_ms=-1)
    future = now_ms() + 86_400_000
    with pytest.raises(ValueError, match=f"`{future}`"):
        IdGenerator(epoch_ms=future)
    assert IdGenerator(epoch_ms=0).epoch_ms == 0


@pytest.mark.parametrize("bad", [-1, 2**63, 2**64])
def test_parse_validation(bad: int) -> None:
    with pytest.raises(ValueError, match=f"`{bad}`"):
        IdGenerator().parse(bad)
    with pytest.raises(ValueError, match=f"`{bad}`"):
        _core.parse_id(bad)


def test_parse_extremes() -> None:
    gen = IdGenerator()
    top = gen.parse(MAX_ID)
    assert (top.timestamp_ms, top.worker_id, top.sequence) == ((1 << 44) - 1 + DEFAULT_EPOCH_MS, 255, 2047)
    zero = gen.parse(0)
    assert (zero.timestamp_ms, zero.worker_id, zero.sequence) == (DEFAULT_EPOCH_MS, 0, 0)
    assert zero.datetime == datetime(2024, 1, 1, tzinfo=UTC)


def test_generator_and_parts_are_read_only() -> None:
    gen = IdGenerator(worker_id=4)
    for name in ("worker_id", "epoch_ms", "layout"):
        with pytest.raises(AttributeError):
            setattr(gen, name, 1)
    parts = gen.parse(gen.next())
    for name in ("timestamp_ms", "worker_id", "sequence", "datetime"):
        with pytest.raises(AttributeError):
            setattr(parts, name, 1)
    assert gen.worker_id == 4


def test_id_parts_value_semantics() -> None:
    gen = IdGenerator(worker_id=2, epoch_ms=1_000)
    i = (7 << 19) | (2 << 11) | 9
    parts = gen.parse(i)
    assert repr(parts) == "IdParts(timestamp_ms=1007, worker_id=2, sequence=9)"
    assert parts == gen.parse(i)
    assert hash(parts) == hash(gen.parse(i))
    assert parts != gen.parse(i + 1)
    with pytest.raises(TypeError):
        type(parts)()


# -- clock behaviour (needs a core whose clock tests can set) ------------------------------------


def test_clock_before_epoch_counts_as_millisecond_zero() -> None:
    epoch = now_ms() - 10_000
    gen = IdGenerator(worker_id=1, epoch_ms=epoch)
    set_clock(gen, epoch - 5_000)
    a, b = gen.next(), gen.next()
    assert a < b
    assert gen.parse(a).timestamp_ms == gen.parse(b).timestamp_ms == epoch


def test_clock_stepping_back_keeps_ids_increasing() -> None:
    gen = IdGenerator()
    t = now_ms()
    set_clock(gen, t)
    a = gen.next()
    set_clock(gen, t - 60_000)
    b = gen.next()
    assert b > a
    assert gen.parse(b).timestamp_ms == t
    assert gen.parse(b).sequence == gen.parse(a).sequence + 1
    set_clock(gen, t + 1)
    c = gen.next()
    assert (gen.parse(c).timestamp_ms, gen.parse(c).sequence) == (t + 1, 0)


def test_overflow_on_a_frozen_clock_borrows_then_waits_for_the_clock() -> None:
    gen = IdGenerator(worker_id=8, layout=(50, 8, 5))  # 32 ids per millisecond
    t = now_ms()
    set_clock(gen, t)
    ids = [gen.next() for _ in range(50)] + gen.next_many(50)
    assert all(a < b for a, b in pairwise(ids))
    parts = [gen.parse(i) for i in ids]
    assert [(p.timestamp_ms - t, p.sequence) for p in parts] == [(k // 32, k % 32) for k in range(100)]
    # The clock is still behind the borrowed millisecond (t + 3): ids go on from there.
    set_clock(gen, t + 2)
    a, b = gen.parse(gen.next()), gen.parse(gen.next())
    assert (a.timestamp_ms - t, a.sequence, b.timestamp_ms - t, b.sequence) == (3, 4, 3, 5)
    # Once the clock is past it, the sequence restarts.
    set_clock(gen, t + 4)
    nxt = gen.parse(gen.next())
    assert (nxt.timestamp_ms, nxt.sequence) == (t + 4, 0)


# -- CATGA_WORKER_ID -----------------------------------------------------------------------------


def run_with_worker_env(value: str | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("CATGA_WORKER_ID", None)
    if value is not None:
        env["CATGA_WORKER_ID"] = value
    # Import catga from wherever this test process found it.
    source = str(Path(catga.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    code = (
        "from catga import _core; print(_core.default_generator().worker_id, _core.parse_id(_core.new_id()).worker_id)"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(("value", "expected"), [("0", 0), ("42", 42), ("255", 255), (" 7 ", 7)])
def test_worker_id_from_env(value: str, expected: int) -> None:
    result = run_with_worker_env(value)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(expected), str(expected)]


@pytest.mark.parametrize("value", ["256", "-1", "abc", "1.5", "0x10", "1_0"])
def test_bad_worker_id_env_fails_the_import(value: str) -> None:
    result = run_with_worker_env(value)
    assert result.returncode != 0
    assert "ValueError" in result.stderr
    assert f"`{value}`" in result.stderr


@pytest.mark.parametrize("value", [None, "", "  "])
def test_worker_id_without_env_is_random_in_range(value: str | None) -> None:
    result = run_with_worker_env(value)
    assert result.returncode == 0, result.stderr
    worker, parsed = (int(x) for x in result.stdout.split())
    assert 0 <= worker <= 255
    assert worker == parsed


def _worker_id_in_forked_child() -> int:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the worker id its new ids carry, then leave at once
        os.close(read)
        os.write(write, str(_core.parse_id(_core.new_id()).worker_id).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        value = int(pipe.read())
    os.waitpid(pid, 0)
    return value


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.skipif(bool(os.environ.get("CATGA_WORKER_ID")), reason="CATGA_WORKER_ID pins the worker id")
def test_a_forked_child_picks_a_new_worker_id() -> None:
    parent = _core.parse_id(_core.new_id()).worker_id
    # Each child draws 1 of 256 ids at random: three children all drawing the parent's has odds 2**-24.
    children = [_worker_id_in_forked_child() for _ in range(3)]
    assert any(child != parent for child in children)
    assert _core.parse_id(_core.new_id()).worker_id == parent


def test_set_worker_id_keeps_ids_increasing() -> None:
    gen = _core.IdGenerator(worker_id=200)
    before = gen.next()
    gen.set_worker_id(3)
    after = gen.next()
    assert after > before
    assert gen.worker_id == 3
    assert gen.parse(after).worker_id == 3
    with pytest.raises(ValueError, match=r"worker id `256` does not fit in `8` bits"):
        gen.set_worker_id(256)
