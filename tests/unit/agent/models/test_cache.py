"""The content-addressed model cache: verified, atomic, recovered after a crash."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import require

from agent.models.cache import CachedVersion, CacheError, ModelCache, parse_digest

DATA = b"onnx bytes " * 1000
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()


class Store:
    """Feeds a blob to the cache in chunks, as a download does."""

    def __init__(self, cache: ModelCache) -> None:
        self.cache = cache

    async def put(self, digest: str, data: bytes, max_bytes: int) -> Path:
        writer = self.cache.writer(digest, max_bytes)
        for i in range(0, len(data), 4096):
            writer.write(data[i : i + 4096])
        return writer.commit()


async def test_a_blob_is_stored_under_its_digest_only_when_it_matches(tmp_path):
    cache = ModelCache(tmp_path)
    path = await Store(cache).put(DIGEST, DATA, max_bytes=1 << 20)
    assert path.read_bytes() == DATA
    assert path.name == parse_digest(DIGEST)
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert cache.has(DIGEST)
    wrong = "sha256:" + "0" * 64
    with pytest.raises(CacheError, match="expected"):
        await Store(cache).put(wrong, DATA, max_bytes=1 << 20)
    assert not cache.has(wrong)
    assert sorted(p.name for p in cache.blobs.iterdir()) == [parse_digest(DIGEST)]  # no temp


async def test_size_limit_and_bad_digests(tmp_path):
    cache = ModelCache(tmp_path)
    with pytest.raises(CacheError, match="larger than"):
        await Store(cache).put(DIGEST, DATA, max_bytes=100)
    for bad in ("md5:abc", "../../etc/passwd", "sha256:" + "g" * 64, ""):
        with pytest.raises(CacheError, match="not a sha256 digest"):
            cache.path(bad)
    assert list(cache.blobs.iterdir()) == []


@pytest.fixture
def tiny_disk(tmp_path) -> Iterator[Path]:
    """A real 256 KiB tmpfs: a disk that fills up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    require(done.returncode == 0, "root, to mount a small tmpfs")
    try:
        yield mount
    finally:
        # Lazy: a file still open there (a lock a failed test left) must not leave it mounted.
        subprocess.run(["umount", "--lazy", str(mount)], check=False)


async def test_a_full_disk_leaves_the_cache_as_it_was(tiny_disk):
    cache = ModelCache(tiny_disk)
    await Store(cache).put(DIGEST, DATA, max_bytes=1 << 20)
    big = os.urandom(1 << 20)
    with pytest.raises(CacheError, match="cannot write to the model cache: No space left"):
        await Store(cache).put("sha256:" + hashlib.sha256(big).hexdigest(), big, 2 << 20)
    assert [p.name for p in cache.blobs.iterdir()] == [parse_digest(DIGEST)]
    assert cache.path(DIGEST).read_bytes() == DATA
    cache.save_state({"defects": [CachedVersion("1", parse_digest(DIGEST))]})
    assert cache.load_state()["defects"][0].version == "1"


async def test_recover_removes_partial_and_corrupt_blobs(tmp_path):
    cache = ModelCache(tmp_path)
    await Store(cache).put(DIGEST, DATA, max_bytes=1 << 20)
    (cache.blobs / ".partial-abc").write_bytes(b"half a model")
    corrupt = cache.blobs / ("1" * 64)
    corrupt.write_bytes(b"bit rot")
    (cache.blobs / "not-a-digest").write_bytes(b"?")
    removed = cache.recover()
    assert sorted(removed) == sorted([".partial-abc", "1" * 64, "not-a-digest"])
    assert [p.name for p in cache.blobs.iterdir()] == [parse_digest(DIGEST)]


async def test_state_round_trips_and_forgets_versions_whose_blobs_are_gone(tmp_path):
    cache = ModelCache(tmp_path)
    await Store(cache).put(DIGEST, DATA, max_bytes=1 << 20)
    good = CachedVersion("1.1.0", parse_digest(DIGEST), {"name": "defects"}, "file:///m.json")
    gone = CachedVersion("1.0.0", "2" * 64)
    cache.save_state({"defects": [good, gone]})
    assert cache.load_state() == {"defects": [good]}
    cache.state_file.write_text("{not json")
    assert cache.load_state() == {}
    assert cache.collect_garbage(keep=set()) == []  # written here: leased until served or not
    cache.serve(set())
    assert cache.collect_garbage(keep=set()) == [parse_digest(DIGEST)]


async def test_a_versions_golden_set_is_kept_with_it_and_collected_with_it(tmp_path):
    cache = ModelCache(tmp_path)
    golden = b"golden archive"
    golden_digest = hashlib.sha256(golden).hexdigest()
    await Store(cache).put(DIGEST, DATA, max_bytes=1 << 20)
    await Store(cache).put(golden_digest, golden, max_bytes=1 << 20)
    sidecar = {"name": "defects", "golden": {"file": "golden.tar", "sha256": golden_digest}}
    version = CachedVersion("1.1.0", parse_digest(DIGEST), sidecar)
    assert version.blobs() == {parse_digest(DIGEST), golden_digest}
    keep = cache.remember("defects", version)
    assert cache.collect_garbage(keep) == []
    assert cache.has(golden_digest)
    newer = CachedVersion("1.2.0", "3" * 64, {"name": "defects"})
    cache.serve({newer.model})  # this process moved on to the newer version
    assert cache.collect_garbage(cache.remember("defects", newer, keep=1)) != []
    assert not cache.has(golden_digest)


async def test_a_rolled_back_version_is_no_longer_last_known_good_and_stays_rejected(tmp_path):
    cache = ModelCache(tmp_path)
    other = b"the previous version"
    await Store(cache).put(DIGEST, DATA, max_bytes=1 << 20)
    await Store(cache).put(hashlib.sha256(other).hexdigest(), other, max_bytes=1 << 20)
    previous = CachedVersion("1.0.0", hashlib.sha256(other).hexdigest())
    bad = CachedVersion("1.1.0", parse_digest(DIGEST))
    cache.remember("defects", previous)
    cache.remember("defects", bad)
    cache.reject("defects", bad.model)
    assert cache.load_state() == {"defects": [previous]}
    assert cache.rejected() == {"defects": bad.model}
    cache.remember("fusion", CachedVersion("2.0.0", parse_digest(DIGEST)))  # other writes keep it
    assert cache.rejected() == {"defects": bad.model}
    cache.forgive("defects")
    assert cache.rejected() == {}
    assert cache.load_state()["defects"] == [previous]
