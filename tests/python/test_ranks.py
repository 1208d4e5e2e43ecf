"""Real torchrun jobs: an FSDP2 transformers model across world sizes, DCP's
own entry points with ckpt's plugin, and ranks that fail."""

from __future__ import annotations

import os

from conftest import run_ranks


def test_an_fsdp2_llama_saved_on_four_ranks_loads_bit_exactly_on_two(tmp_path):
    out = run_ranks(4, "fsdp2_llama.py", "save", str(tmp_path), timeout=400)
    assert out[0].count("save") >= 4
    out = run_ranks(2, "fsdp2_llama.py", "load", str(tmp_path), timeout=400)
    assert out[0].count("OK rank") == 2


def test_dcp_async_save_with_the_thread_executor_writes_through_ckpt(tmp_path):
    out = run_ranks(2, "dcp_plugin.py", "async_thread", str(tmp_path / "c"))
    assert out[0].count("OK rank") == 2


def test_dcp_async_save_with_the_process_executor_writes_through_ckpt(tmp_path):
    out = run_ranks(2, "dcp_plugin.py", "async_process", str(tmp_path / "c"))
    assert out[0].count("OK rank") == 2


def test_torch_hugging_face_writer_output_loads_through_ckpt_into_other_layouts(tmp_path):
    out = run_ranks(2, "dcp_plugin.py", "torch_writer", str(tmp_path / "c"))
    assert out[0].count("OK rank") == 2


def test_a_rank_that_stops_answering_makes_every_rank_raise_within_the_timeout(tmp_path):
    out = run_ranks(2, "failures.py", "hang", str(tmp_path / "c"))
    raised = [line for line in out[0].splitlines() if "RAISED rank" in line]
    assert len(raised) == 2, out[0][-3000:]
    assert not os.path.exists(tmp_path / "c")
    assert out[0].count("RECOVERED") == 2, out[0][-3000:]


def test_an_invalid_state_dict_on_one_rank_makes_every_rank_raise_at_once(tmp_path):
    out = run_ranks(2, "failures.py", "prepare_error", str(tmp_path / "c"))
    assert out[0].count("RAISED rank") == 2 and out[0].count("RECOVERED") == 2, out[0][-3000:]


def test_an_async_save_under_a_staging_budget_succeeds_on_a_rank_that_writes_little(tmp_path):
    out = run_ranks(2, "failures.py", "budget", str(tmp_path / "c"))
    assert out[0].count("RECOVERED") == 2, out[0][-3000:]


def test_dcp_plan_caching_reuses_plans_across_saves_through_the_plugin(tmp_path):
    out = run_ranks(2, "dcp_plugin.py", "cached", str(tmp_path / "c"))
    assert out[0].count("OK rank") == 2


def test_a_rank_that_cannot_write_makes_every_rank_raise_the_same_error_and_nothing_is_published(tmp_path):
    out = run_ranks(2, "failures.py", "io", str(tmp_path / "c"))
    raised = sorted(line.split("IOError: ", 1)[1] for line in out[0].splitlines() if "RAISED rank" in line)
    assert len(raised) == 2 and raised[0] == raised[1] and "rank 1:" in raised[0], raised
    assert "File too large" in raised[0]
    assert out[0].count("RECOVERED") == 2


def test_a_failed_dcp_save_through_the_plugin_publishes_nothing(tmp_path):
    out = run_ranks(2, "failures.py", "io_dcp", str(tmp_path / "c"))
    assert out[0].count("RAISED rank") == 2 and out[0].count("RECOVERED") == 2, out[0][-3000:]
