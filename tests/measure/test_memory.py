"""Peak and current RSS from /proc (real and fake), the probe's baseline, reset and pauses."""

import os

import pytest

from ffint8.measure.memory import (
    MB,
    MemoryProbe,
    current_rss_bytes,
    peak_rss_bytes,
    release_free_heap,
    reset_peak_rss,
)


def write_status(root, rss_kb, hwm_kb, file_kb=None):
    d = root / "proc" / "self"
    d.mkdir(parents=True, exist_ok=True)
    file_line = "" if file_kb is None else f"RssFile:\t{file_kb:8d} kB\n"
    (d / "status").write_text(f"Name:\tpython\nVmPeak:\t 999999 kB\nVmHWM:\t{hwm_kb:8d} kB\n"
                              f"VmRSS:\t{rss_kb:8d} kB\n{file_line}Threads:\t4\n")


def test_parses_fake_status(tmp_path):
    write_status(tmp_path, rss_kb=1500, hwm_kb=4000)
    assert current_rss_bytes(tmp_path) == 1500 * 1024
    assert peak_rss_bytes(tmp_path) == 4000 * 1024


def test_without_proc_peak_falls_back_and_current_is_unknown(tmp_path):
    assert current_rss_bytes(tmp_path) is None
    peak = peak_rss_bytes(tmp_path)  # getrusage: this very process, at least a few MB
    assert peak is not None and peak > 10 * MB


def test_probe_on_fake_tree_subtracts_baseline_and_keeps_process_peak(tmp_path):
    write_status(tmp_path, rss_kb=100_000, hwm_kb=300_000)  # data loading peaked at 300 MB
    probe = MemoryProbe(tmp_path)
    probe.begin()
    assert (tmp_path / "proc/self/clear_refs").read_text() == "5"
    write_status(tmp_path, rss_kb=120_000, hwm_kb=150_000)  # the loop, after the reset
    rep = probe.end()
    assert rep.peak_reset
    assert rep.baseline_rss == 100_000 * 1024
    assert rep.loop_peak_rss == 150_000 * 1024
    assert rep.train_memory == 50_000 * 1024
    assert rep.peak_rss == 300_000 * 1024
    assert rep.to_dict()["train_memory_mb"] == pytest.approx(50_000 / 1024, abs=0.01)


def test_probe_reports_the_file_backed_growth(tmp_path):
    write_status(tmp_path, rss_kb=100_000, hwm_kb=100_000, file_kb=80_000)
    probe = MemoryProbe(tmp_path)
    probe.begin()
    write_status(tmp_path, rss_kb=130_000, hwm_kb=140_000, file_kb=90_240)  # code run first
    rep = probe.end()
    assert rep.train_memory == 40_000 * 1024
    assert rep.file_growth == 10_240 * 1024
    assert rep.to_dict()["file_growth_mb"] == 10.0


def test_file_growth_is_unknown_without_rssfile(tmp_path):
    write_status(tmp_path, rss_kb=100_000, hwm_kb=100_000)  # a kernel before 4.5
    probe = MemoryProbe(tmp_path)
    probe.begin()
    rep = probe.end()
    assert rep.file_growth is None and rep.to_dict()["file_growth_mb"] is None


def test_paused_stretch_is_left_out_of_the_loop_peak(tmp_path):
    write_status(tmp_path, rss_kb=100_000, hwm_kb=100_000)
    probe = MemoryProbe(tmp_path)
    probe.begin()
    write_status(tmp_path, rss_kb=110_000, hwm_kb=130_000)  # training, epoch 1
    probe.pause()
    write_status(tmp_path, rss_kb=110_000, hwm_kb=400_000)  # evaluation
    probe.resume()
    write_status(tmp_path, rss_kb=110_000, hwm_kb=125_000)  # training, epoch 2
    rep = probe.end()
    assert rep.loop_peak_rss == 130_000 * 1024
    assert rep.train_memory == 30_000 * 1024
    assert rep.peak_rss == 400_000 * 1024  # the process peak still sees the evaluation


def test_end_before_begin_raises(tmp_path):
    with pytest.raises(RuntimeError, match="before begin"):
        MemoryProbe(tmp_path).end()


def _touch(n_bytes):
    buf = bytearray(n_bytes)
    for i in range(0, n_bytes, 4096):
        buf[i] = 1
    return buf


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_real_process_counts_only_what_the_loop_allocates():
    if not reset_peak_rss():
        pytest.skip("this kernel does not let a process reset its VmHWM")
    before = _touch(120 * MB)  # a peak before the loop (like loading data)
    del before
    probe = MemoryProbe()
    probe.begin()
    during = _touch(40 * MB)
    rep = probe.end()
    del during
    assert 38 * MB <= rep.train_memory <= 80 * MB
    assert rep.peak_rss >= rep.baseline_rss + 100 * MB


def test_heap_goes_back_before_the_baseline_and_before_each_restart(tmp_path, monkeypatch):
    from ffint8.measure import memory

    write_status(tmp_path, rss_kb=100_000, hwm_kb=100_000)
    refs = tmp_path / "proc/self/clear_refs"
    calls = []
    # the high-water mark must restart after the release, not before it
    monkeypatch.setattr(memory, "release_free_heap", lambda: calls.append(refs.exists()))
    probe = MemoryProbe(tmp_path)
    probe.begin()
    assert calls == [False]
    probe.pause()
    refs.unlink()
    probe.resume()
    assert calls == [False, False] and refs.exists()


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_release_free_heap_gives_freed_blocks_back():
    # 64 KB blocks stay below glibc's mmap threshold, so they live on the heap; the last one
    # keeps the heap's top in use, so free() alone cannot shrink it.
    blocks = [_touch(64 * 1024) for _ in range(1200)]
    keep = blocks[-1]
    del blocks
    held = current_rss_bytes()
    if not release_free_heap():
        pytest.skip("no malloc_trim in this C library")
    assert held - current_rss_bytes() > 40 * MB
    del keep
