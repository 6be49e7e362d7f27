"""Interop with pyroaring: the Rust index speaks the portable Roaring format, byte for byte.

Format (https://github.com/RoaringBitmap/RoaringFormatSpec): a little-endian u32 cookie, 12346
when no container is a run container (then a u32 container count follows), or 12347 in the low
16 bits with (containers - 1) in the high 16 bits when runs are present (then a run bitmap of
ceil(n / 8) bytes). Then per container a u16 key (high 16 bits of the values) and a u16
cardinality - 1; then, for the no-run form (or at least 4 containers), a u32 byte offset per
container; then the containers: arrays of sorted u16, 8 KiB bitmaps, or runs
(u16 count, then (u16 start, u16 length - 1) pairs).
"""

from __future__ import annotations

import struct

import healthcode_matcher as hm
from matcher_support import SECRET, TODAY, from_u32, u32
from pyroaring import BitMap

GOLDEN_SET = [1, 2, 3, 1000, 70000]
# pyroaring 1.2.0's serialization of GOLDEN_SET, checked field by field below.
GOLDEN_BYTES = bytes.fromhex(
    "3a300000"  # cookie 12346: no run containers
    "02000000"  # two containers
    "0000"
    "0300"  # key 0: 4 values
    "0100"
    "0000"  # key 1: 1 value
    "18000000"  # offset of container 0: 24
    "20000000"  # offset of container 1: 32
    "0100"
    "0200"
    "0300"
    "e803"  # 1, 2, 3, 1000
    "7011"  # 70000 - 65536 = 4464
)
RUN_SET = range(100_000)
# pyroaring 1.2.0's serialization of RUN_SET (built from a range, so run containers).
GOLDEN_RUN_BYTES = bytes.fromhex(
    "3b300100"  # cookie 12347 | (2 - 1) << 16
    "03"  # run bitmap: both containers are runs
    "0000"
    "ffff"  # key 0: 65536 values
    "0100"
    "9f86"  # key 1: 34464 values
    "0100"
    "0000"
    "ffff"  # one run: 0, length 65536
    "0100"
    "0000"
    "9f86"  # one run: 0, length 34464
)


def test_golden_bytes_match_pyroaring() -> None:
    assert BitMap(GOLDEN_SET).serialize() == GOLDEN_BYTES
    assert BitMap(RUN_SET).serialize() == GOLDEN_RUN_BYTES
    assert BitMap.deserialize(GOLDEN_BYTES) == BitMap(GOLDEN_SET)
    assert BitMap.deserialize(GOLDEN_RUN_BYTES) == BitMap(RUN_SET)


def test_golden_headers_follow_the_spec() -> None:
    cookie, containers = struct.unpack_from("<II", GOLDEN_BYTES)
    assert cookie == 12346 and containers == 2
    keys_and_cards = struct.unpack_from("<4H", GOLDEN_BYTES, 8)
    assert keys_and_cards == (0, 3, 1, 0)
    offsets = struct.unpack_from("<2I", GOLDEN_BYTES, 16)
    assert offsets == (24, 32)
    assert struct.unpack_from("<4H", GOLDEN_BYTES, 24) == (1, 2, 3, 1000)
    assert struct.unpack_from("<H", GOLDEN_BYTES, 32) == (70000 - 65536,)
    assert len(GOLDEN_BYTES) == 34

    (word,) = struct.unpack_from("<I", GOLDEN_RUN_BYTES)
    assert word & 0xFFFF == 12347 and (word >> 16) + 1 == 2
    assert GOLDEN_RUN_BYTES[4] == 0b11


def index_with_rows(ids: list[int], persons: int) -> hm.Index:
    builder = hm.Index(SECRET).builder()
    assert from_u32(builder.add_persons(hm.synthetic_id_numbers(persons, 1))) == list(
        range(persons)
    )
    builder.define_source("confirmed", "person")
    builder.add_rows("confirmed", u32(ids), TODAY)
    return builder.finish()


def test_rust_writes_the_golden_bytes() -> None:
    index = index_with_rows(GOLDEN_SET, 70_001)
    assert index.source_bitmap("confirmed", TODAY) == GOLDEN_BYTES


def test_rust_bitmaps_load_in_pyroaring() -> None:
    import random

    rng = random.Random(3)
    persons = 200_000
    sets = [
        rng.sample(range(persons), 50),  # sparse: array containers
        rng.sample(range(persons), 60_000),  # dense: bitmap containers
        list(range(1_000, 150_000)),  # one long run
        [],
    ]
    builder = hm.Index(SECRET).builder()
    builder.add_persons(hm.synthetic_id_numbers(persons, 2))
    builder.define_source("s", "person")
    for day, ids in enumerate(sets):
        builder.add_rows("s", u32(ids), TODAY - day)
    index = builder.finish()
    for day, ids in enumerate(sets):
        data = index.source_bitmap("s", TODAY - day)
        assert BitMap.deserialize(data) == BitMap(ids)
        # Valid portable format, not just something pyroaring tolerates.
        (cookie,) = struct.unpack_from("<I", data)
        assert cookie == 12346 or cookie & 0xFFFF == 12347


def test_pyroaring_bitmaps_feed_the_index() -> None:
    # There is no import of serialized bitmaps: a feed deserializes them and passes dense ids.
    made_by_pyroaring = BitMap([5, 6, 7, 4_000, 90_000]).serialize()
    ids = BitMap.deserialize(made_by_pyroaring)
    index = index_with_rows(list(ids), 100_000)
    assert index.source_bitmap("confirmed", TODAY) == made_by_pyroaring
    plan = hm.Plan([{"id": "c", "colour": "red", "checks": [{"source": "confirmed"}]}])
    verdicts = hm.Verdicts(index, plan, TODAY)
    assert BitMap.deserialize(verdicts.non_green()) == ids
    assert verdicts.colour_counts() == (100_000 - 5, 0, 5)


def test_other_buckets_are_separate() -> None:
    builder = hm.Index(SECRET).builder()
    builder.add_persons(hm.synthetic_id_numbers(10, 3))
    builder.add_phones(hm.synthetic_phones(10, 3), u32(range(10)))
    builder.define_source("travel", "person", has_county=True)
    builder.define_source("roaming", "phone")
    builder.add_rows("travel", u32([1, 2, 3]), TODAY, u32([120101, 120102, 120101]))
    builder.add_rows("travel", u32([4]), None, u32([120101]))
    builder.add_rows("roaming", u32([9, 8]), TODAY - 1)
    index = builder.finish()
    assert sorted(index.sources()) == [("roaming", "phone", False), ("travel", "person", True)]
    assert index.source_counties("travel") == [120101, 120102]
    assert set(index.source_days("travel")) == {TODAY, None}
    assert BitMap.deserialize(index.source_bitmap("travel", TODAY, 120101)) == BitMap([1, 3])
    assert BitMap.deserialize(index.source_bitmap("travel", TODAY, 120102)) == BitMap([2])
    assert BitMap.deserialize(index.source_bitmap("travel", None, 120101)) == BitMap([4])
    # Without a county, a county source's day bucket is the union over its counties.
    assert BitMap.deserialize(index.source_bitmap("travel", TODAY)) == BitMap([1, 2, 3])
    assert BitMap.deserialize(index.source_bitmap("travel", TODAY - 5, 120101)) == BitMap()
    assert BitMap.deserialize(index.source_bitmap("roaming", TODAY - 1)) == BitMap([8, 9])
    assert index.source_len("travel") == 4
    assert index.source_days("roaming") == [TODAY - 1]
