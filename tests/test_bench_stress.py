"""bench/stress_regimes.py: its regimes have the stated logit spread, and its command line checks its input."""

import pytest

from bench.stress_regimes import GEOMETRIES, main, stress_qkv


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_regimes_have_the_stated_logit_std(geometry):
    # Logits of the first 512 queries of batch element 0 are rescaled to the regime's std (1e-4 relative).
    q, k, v, std = stress_qkv(f"{geometry}-3", seed=0, batch=1, nq=1024, nk=256, d=16, dv=8)
    assert q.shape == (1, 1024, 16) and k.shape == (1, 256, 16) and v.shape == (1, 256, 8) and std == 3.0
    assert (q[0, :512] @ k[0].t()).std().item() == pytest.approx(3.0, rel=1e-4)


def test_command_prints_one_line_per_cell(capsys):
    assert main(["--regimes", "kvclust-2,multiscale-4", "--budgets", "1/8", "--seeds", "0",
                 "--shape", "1,256,64,16,16", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[1].startswith("kvclust-2 1/8:") and lines[2].startswith("multiscale-4 1/8:")
    assert all(" | " in line and "smyrf-topkeys=" in line for line in lines[1:])


@pytest.mark.parametrize("argv", [["--regimes", "iso"], ["--regimes", "blob-2"], ["--shape", "1,2,3"],
                                  ["--budgets", "2"], ["--budgets", "1/0"], ["--threads", "0"],
                                  ["--threads", "two"]])
def test_bad_input_is_one_line_and_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")


def test_sparse_part_counts_every_batch_element(capsys, monkeypatch):
    # bench/sparse_part.py on one small regime x budget x seed: the summary counts both batch elements.
    import bench.sparse_part as sparse_part
    from bench.regimes import regime_qkv

    monkeypatch.setattr(sparse_part, "regime_qkv", lambda regime, seed: regime_qkv(regime, nq=256, nk=64, seed=seed))
    assert sparse_part.main(["--regimes", "isotropic-mixed", "--budgets", "1/8", "--seeds", "0", "--threads", "1"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert " of 2 at or under 1; largest " in summary


@pytest.mark.parametrize("argv", [["--regimes", "nope"], ["--budgets", "0"], ["--seeds", "a"], ["--threads", "0"]])
def test_sparse_part_bad_input_is_one_line_and_exit_2(argv, capsys):
    import bench.sparse_part as sparse_part

    assert sparse_part.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
