# ruff: noqa: E501  (the mutation table holds verbatim source lines)
"""Plant mistakes one at a time in a temporary copy of the working tree and see whether the tests catch them.

    python tests/tools/mutate.py                    # every mutation, a caught/survived table on stdout
    python tests/tools/mutate.py --only reformer-look-ahead,bootstrap-no-resampling
    python tests/tools/mutate.py --list             # names, files and test selections only
    python tests/tools/mutate.py --markdown out.md  # also write the table as Markdown

The copy holds the tracked and untracked (not ignored) files of the working tree, so it sees uncommitted work; the
project's virtual environment runs the tests there (``python -m pytest <tests> -n0 -q -x``), with the copy first on
the import path (checked before any mutation). Every mutation's old snippet must occur exactly once in its file, or
the script stops before running anything (exit 2). The unmutated tree must pass every selection first (the
baseline), or a failure would be no evidence. A mutation is caught when its selection fails (pytest exit 1) and
survives when it passes (exit 0); any other exit (a collection error, a timeout) is reported as such.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
TIMEOUT_S = 900


@dataclass(frozen=True)
class Mutation:
    name: str
    area: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]  # pytest arguments: test files, optionally with -k expressions
    what: str


M = Mutation
MUTATIONS: tuple[Mutation, ...] = (
    # -- the four mistakes of issue 22, and the non-atomic write ---------------------------------------------------
    M("reformer-look-ahead", "attention (published)", "gan/attention/parts/round_layout.py",
      "torch.cat([k_rows.roll(1, dims=2), k_rows], dim=-1)", "torch.cat([k_rows.roll(-1, dims=2), k_rows], dim=-1)",
      ("tests/test_oracle_reformer.py",), "separate-qk query chunk i meets key chunk i+1 instead of i-1"),
    M("kdeformer-draw-order", "attention (published)", "gan/attention/published/kdeformer.py",
      "            return KDEformerDraws(\n"
      "                torch.randn(batch, d, projs, generator=generator, dtype=torch.float64),\n"
      "                torch.randn(batch, dv + 1, generator=generator, dtype=torch.float64),\n",
      "            start = torch.randn(batch, dv + 1, generator=generator, dtype=torch.float64)\n"
      "            return KDEformerDraws(\n"
      "                torch.randn(batch, d, projs, generator=generator, dtype=torch.float64),\n"
      "                start,\n",
      ("tests/test_oracle_draws.py",), "power-iteration start drawn before the hyperplanes"),
    M("scatterbrain-centred-lam-numerator-only", "attention (variant)", "gan/attention/variants/scatterbrain_centred.py",
      "    low_rank.den.mul_(lam.view(-1, 1))\n", "",
      ("tests/test_oracle_calibration.py",), "the FAVOR+ residual's weight applied to the numerator only"),
    M("bootstrap-no-resampling", "eval", "eval/metrics.py",
      "draws = torch.randint(n, (b, n), generator=gen)", "draws = torch.arange(n).expand(b, n)",
      ("tests/test_eval_bootstrap.py",), "intervals from the same image set every time (width 0)"),
    M("write-atomic-in-place", "common (files)", "common/files.py",
      "        with open(temp, \"wb\") as f:\n            write(f)\n        os.replace(temp, path)\n",
      "        with open(path, \"wb\") as f:\n            write(f)\n",
      ("tests/test_atomic_writes.py",), "write_atomic writes the final file in place"),
    # -- attention: published ---------------------------------------------------------------------------------------
    M("performer-qr-unsigned", "attention (published)", "gan/attention/parts/random_features.py",
      "directions = directions * torch.diagonal(triangle, dim1=-2, dim2=-1).sign().unsqueeze(-2)",
      "directions = directions", ("tests/test_attention_performer.py",),
      "FAVOR+ directions without the sign fix of QR (biased kernel estimate)"),
    M("thinformer-no-coin", "attention (published)", "gan/attention/published/thinformer.py",
      "    return (torch.cat(swaps, dim=-1) ^ draw.coin).long()", "    return (torch.cat(swaps, dim=-1)).long()",
      ("tests/test_oracle_draws.py",), "kernel halving without the symmetrising coin"),
    M("thinformer-coin-first", "attention (published)", "gan/attention/published/thinformer.py",
      "                uniforms = torch.empty(buckets, batch, pairs).uniform_(-bound, bound, generator=generator)\n"
      "                out += [uniforms.transpose(0, 1), torch.empty(1, dtype=torch.bool).bernoulli_(generator=generator)]",
      "                coin = torch.empty(1, dtype=torch.bool).bernoulli_(generator=generator)\n"
      "                uniforms = torch.empty(buckets, batch, pairs).uniform_(-bound, bound, generator=generator)\n"
      "                out += [uniforms.transpose(0, 1), coin]",
      ("tests/test_oracle_draws.py",), "each round's coin drawn before its thresholds"),
    M("kdeformer-no-uniform-floor", "attention (published)", "gan/attention/published/kdeformer.py",
      "p = values.double().norm(dim=-1) / lam.unsqueeze(-1) + 1.0 / nk", "p = values.double().norm(dim=-1) / lam.unsqueeze(-1)",
      ("tests/test_oracle_draws.py",), "sampling probabilities without the 1/Nk term"),
    M("topk-no-renormalise", "attention (published)", "gan/attention/published/topk.py",
      "    weights = torch.softmax(top_scores, dim=-1)  # (B, C, k)", "    weights = top_scores.exp()  # (B, C, k)",
      ("tests/test_attention_topk.py",), "top-k weights not normalised over the k keys"),
    M("sblocal-window-shift", "attention (published)", "gan/attention/published/sblocal.py",
      "* window + u - window // 2", "* window + u - window // 2 + 1",
      ("tests/test_attention_sblocal.py",), "local window one key to the right"),
    M("reformer-self-not-masked", "attention (published)", "gan/attention/parts/shared_qk_lsh.py",
      "SELF_ATTENTION_LOGIT = -5e4", "SELF_ATTENTION_LOGIT = 0.0",
      ("tests/test_attention_reformer.py", "-k", "reference_reading"), "shared-QK tokens attend to themselves"),
    M("smyrf-duplicates-once", "attention (published)", "gan/attention/parts/sorted_clusters.py",
      "                scores -= counts.float().log()", "                pass",
      ("tests/test_attention_scatterbrain.py",), "Scatterbrain's pairs met in several rounds counted each time"),
    M("exact-ignores-scale", "attention (published)", "gan/attention/published/exact.py",
      "    if scale != 1.0:\n        scores.mul_(scale)\n", "",
      ("tests/test_attention_exact.py",), "exact attention without the scale"),
    # -- attention: variants ----------------------------------------------------------------------------------------
    M("mix-weight-whole-row", "attention (variant)", "gan/attention/parts/round_attention.py",
      "weight = (nk - top_pairs) / rest_pairs.clamp_min(1.0)", "weight = nk / rest_pairs.clamp_min(1.0)",
      ("tests/test_oracle_calibration.py", "-k", "smyrf"), "sampled keys stand for the whole row, top keys counted twice"),
    M("union-pairs-never-marked-met", "attention (variant)", "gan/attention/parts/round_attention.py",
      "        self.bits.index_add_(0, word, key_bits.masked_fill(old, 0).view(-1))  # distinct powers of two: an OR\n", "",
      ("tests/test_attention_smyrf_topkeys.py", "-k", "union or double_count"),
      "pairs met in several hash rounds counted in each (the union's duplicate bits never set)"),
    M("mean-field-no-variance", "attention (variant)", "gan/attention/parts/probe_calibration.py",
      "+ 0.5 * (torch.bmm(qs, sigma) * qs).sum(-1)", "+ 0.0 * (torch.bmm(qs, sigma) * qs).sum(-1)",
      ("tests/test_oracle_calibration.py", "-k", "isotropic"), "mean-field kernel without its variance term"),
    M("centroids-one-lloyd-step", "attention (variant)", "gan/attention/parts/key_centroids.py",
      "LLOYD_STEPS = 8", "LLOYD_STEPS = 1",
      ("tests/test_oracle_calibration.py", "-k", "centroids"), "key groups after 1 Lloyd step instead of 8"),
    M("centred-favor-no-key-shift", "attention (variant)", "gan/attention/variants/scatterbrain_centred.py",
      "    lk = favor_log_features(k - k_mean, proj, scale) + key_shift  # (B, Nk, m)",
      "    lk = favor_log_features(k - k_mean, proj, scale)  # (B, Nk, m)",
      ("tests/test_oracle_calibration.py", "-k", "FAVOR or fixed_estimator"),
      "centred FAVOR+ without the exact per-key factor exp(s mean(q).(k - mean(k)))"),
    M("shrink-no-positive-part", "attention (variant)", "gan/attention/parts/centred_favor.py",
      "    return (1 - var / gap_sq.clamp_min(1e-30)).clamp_(0.0, 1.0)",
      "    return (1 - var / gap_sq.clamp_min(1e-30)).clamp_(max=1.0)",
      ("tests/test_oracle_calibration.py", "-k", "performer"), "James-Stein weight without its positive part"),
    M("centred-favor-blocks-across-groups", "attention (variant)", "gan/attention/parts/centred_favor.py",
      "blocks=torch.bmm(kv, kv.mT).mul_(same_group @ same_group.t())", "blocks=torch.bmm(kv, kv.mT)",
      ("tests/test_attention_performer_shrunk.py", "-k", "noise_estimate"),
      "the block-diagonal Gram keeps products across feature groups (each group's spread mixed with the others')"),
    M("meanfield-residual-logit-dropped", "attention (variant)", "gan/attention/variants/scatterbrain_meanfield.py",
      "    weights[..., kk:] = res_logit\n", "",
      ("tests/test_attention_scatterbrain_meanfield.py",),
      "the residual slot keeps the zero key's score (logit 0) instead of the residual's log-mass"),
    M("centroids-offset-not-removed", "attention (variant)", "gan/attention/variants/scatterbrain_centroids.py",
      "centroid.view(b, n_groups, d), scaled_slope, alpha=-1)", "centroid.view(b, n_groups, d), scaled_slope, alpha=0)",
      ("tests/test_attention_scatterbrain_centroids.py",),
      "the slope is taken along q instead of its offset from the group's centroid"),
    M("centroids-empty-count", "attention (variant)", "gan/attention/variants/scatterbrain_centroids.py",
      "F.pad(q, (0, 1), value=1.0)", "F.pad(q, (0, 1), value=0.5)",
      ("tests/test_attention_scatterbrain_centroids.py",),
      "each member counts half: the centroids are twice their members' mean"),
    M("pilot-probe-rows-overlap", "attention (variant)", "gan/attention/parts/linear_fit.py",
      "sorted(drawn[pilots:] or drawn[:probes])", "sorted(drawn[:probes])",
      ("tests/test_attention_scatterbrain_centroids.py", "tests/test_attention_scatterbrain_meanfield.py"),
      "probe queries drawn among the pilots: their own groups flatter the fit"),
    # -- eval ------------------------------------------------------------------------------------------------------
    M("bootstrap-90-percent", "eval", "eval/metrics.py",
      "np.percentile(np.asarray(values), [2.5, 97.5])", "np.percentile(np.asarray(values), [5.0, 95.0])",
      ("tests/test_eval_bootstrap.py",), "90% instead of 95% intervals"),
    M("bootstrap-unpaired", "eval", "eval/metrics.py",
      "draws = torch.randint(n, (b, n), generator=gen)", "draws = torch.randint(n, (b, n))",
      ("tests/test_eval_bootstrap.py",), "resamples from the global generator: not the same sets for every method"),
    M("bootstrap-without-replacement", "eval", "eval/metrics.py",
      "draws = torch.randint(n, (b, n), generator=gen)",
      "draws = torch.stack([torch.randperm(n, generator=gen) for _ in range(b)])",
      ("tests/test_eval_bootstrap.py",), "resampling without replacement (every resample the same set)"),
    M("frechet-trace-factor", "eval", "eval/frechet.py",
      "torch.trace(s2) - 2 * tr_covmean", "torch.trace(s2) - tr_covmean",
      ("tests/test_eval_frechet.py",), "Frechet distance without the factor 2 on tr sqrt(S1 S2)"),
    M("frechet-covariance-n", "eval", "eval/frechet.py",
      "centered.T @ centered / (x.shape[0] - 1)", "centered.T @ centered / x.shape[0]",
      ("tests/test_eval_frechet.py",), "covariance normalised by N instead of N - 1"),
    M("inception-score-std-unbiased", "eval", "eval/inception_score.py",
      "scores.std(unbiased=False)", "scores.std(unbiased=True)",
      ("tests/test_eval_inception_score.py",), "IS std with N - 1 instead of the population std"),
    M("shard-in-place", "eval", "eval/runner.py",
      "    write_atomic(path, lambda f: f.write(buf.getbuffer()))", "    path.write_bytes(buf.getbuffer())",
      ("tests/test_atomic_writes.py",), "eval shards written in place"),
    M("results-in-place", "eval", "eval/report.py",
      "        write_atomic(out / name, lambda f, data=data: f.write(data))", "        (out / name).write_bytes(data)",
      ("tests/test_atomic_writes.py",), "results.json / .csv / .md written in place"),
    # -- weights ---------------------------------------------------------------------------------------------------
    M("openmmlab-bn-gain-bias-swapped", "weights", "weights/formats/openmmlab.py",
      "    \"output_layer.bn.weight\": \"output_layer.0.gain\",\n    \"output_layer.bn.bias\": \"output_layer.0.bias\",\n",
      "    \"output_layer.bn.weight\": \"output_layer.0.bias\",\n    \"output_layer.bn.bias\": \"output_layer.0.gain\",\n",
      ("tests/test_weights_openmmlab_layout.py",), "OpenMMLab output BN weight and bias swapped (writer and reader)"),
    M("openmmlab-raw-before-ema", "weights", "weights/formats/openmmlab.py",
      "PREFIXES = (\"generator_ema.module.\", \"generator_ema.\", \"generator.\")",
      "PREFIXES = (\"generator.\", \"generator_ema.module.\", \"generator_ema.\")",
      ("tests/test_weights_openmmlab_layout.py",), "the raw generator preferred over the EMA copy"),
    M("openmmlab-shortcut-as-conv2", "weights", "weights/formats/openmmlab.py",
      "    (r\"^shortcut\\.conv\\.\", \"conv_sc.\"),", "    (r\"^shortcut\\.conv\\.\", \"conv2.\"),",
      ("tests/test_weights_openmmlab_layout.py",), "the shortcut conv mapped onto conv2"),
    M("save-checkpoint-in-place", "weights", "common/files.py",
      "    return write_atomic(path, lambda f: torch.save(dict(state), f))", "    torch.save(dict(state), path)\n"
      "    return path", ("tests/test_atomic_writes.py",), "checkpoints written in place by torch.save"),
    # -- app -------------------------------------------------------------------------------------------------------
    M("sample-png-in-place", "app", "app/sample_store.py",
      "        write_atomic(self.dir / Path(self.relative(index)).name, lambda f: Image.fromarray(image).save(f, format=\"PNG\"))",
      "        Image.fromarray(image).save(self.dir / Path(self.relative(index)).name, format=\"PNG\")",
      ("tests/test_atomic_writes.py",), "sample PNGs written in place (a half file counts as done on resume)"),
    M("sample-manifest-in-place", "app", "app/sample_store.py",
      "    write_atomic(out / MANIFEST, lambda f: f.writelines((json.dumps(line) + \"\\n\").encode() for line in lines))",
      "    with open(out / MANIFEST, \"wb\") as f:\n"
      "        f.writelines((json.dumps(line) + \"\\n\").encode() for line in lines)",
      ("tests/test_atomic_writes.py",), "the manifest rewritten in place"),
    M("app-random-class-unseeded", "app", "app/inputs.py",
      "        return torch.randint(num_classes, (num_images,), generator=generator).tolist()",
      "        return torch.randint(num_classes, (num_images,)).tolist()",
      ("tests/test_app_logic.py", "-k", "random_class"), "the app's random classes ignore the seed"),
    M("image-rounding-floor", "app", "common/images.py",
      "((images.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round_().to(torch.uint8)",
      "((images.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).to(torch.uint8)",
      ("tests/test_app_logic.py", "-k", "exact_row"), "saved pixels truncated instead of rounded"),
)


def tree_files(root: Path) -> list[Path]:
    """Tracked and untracked-but-not-ignored files of the working tree that exist (deleted ones left out)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, check=True,
                            capture_output=True).stdout.decode().split("\0")
    return [Path(p) for p in listed if p and (root / p).is_file()]


def copy_tree(root: Path, dest: Path) -> None:
    for rel in tree_files(root):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)


def check_snippets(root: Path, mutations: list[Mutation]) -> list[str]:
    problems = []
    for m in mutations:
        path = root / m.file
        if not path.is_file():
            problems.append(f"{m.name}: {m.file} does not exist")
            continue
        count = path.read_text(encoding="utf-8").count(m.old)
        if count != 1:
            problems.append(f"{m.name}: its old snippet occurs {count} times in {m.file} (need exactly 1)")
    return problems


def run_tests(copy: Path, python: Path, tests: tuple[str, ...]) -> tuple[int, float, str]:
    start = time.perf_counter()
    try:
        done = subprocess.run([str(python), "-m", "pytest", *tests, "-n0", "-q", "-x", "-rfE", "-p", "no:cacheprovider"],
                              cwd=copy, capture_output=True, text=True, timeout=TIMEOUT_S,
                              env={**_env(), "PYTHONPATH": str(copy)})
        lines = (done.stdout + done.stderr).strip().splitlines()
        failed = [line for line in lines if line.startswith(("FAILED ", "ERROR "))]
        code, tail = done.returncode, (failed or lines)[-1:]  # the test that caught it, else the summary
    except subprocess.TimeoutExpired:
        code, tail = -1, ["timeout"]
    return code, time.perf_counter() - start, tail[0][:160] if tail else ""


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _failing(tail: str) -> str:
    """The test id of a 'FAILED tests/x.py::test_y[...] - ...' line, without the file and parameters."""
    if not tail.startswith(("FAILED ", "ERROR ")):
        return "-"
    return "`" + tail.split(" ", 1)[1].split(" - ")[0].split("::")[-1].split("[")[0] + "`"


def verdict(code: int) -> str:
    return {1: "caught", 0: "SURVIVED"}.get(code, f"error (exit {code})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", help="comma-separated mutation names")
    p.add_argument("--list", action="store_true", help="list the mutations and exit")
    p.add_argument("--markdown", type=Path, help="also write the table as Markdown to this file")
    p.add_argument("--python", type=Path, default=VENV_PYTHON, help="interpreter with the test dependencies")
    args = p.parse_args(argv)
    chosen = list(MUTATIONS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in {m.name for m in MUTATIONS}]
        if unknown:
            print(f"unknown mutation(s): {', '.join(unknown)}", file=sys.stderr)
            return 2
        chosen = [m for m in MUTATIONS if m.name in names]
    if args.list:
        for m in chosen:
            print(f"{m.name:42s} {m.file:50s} {' '.join(m.tests)}")
        return 0
    problems = check_snippets(ROOT, chosen)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="mutate-") as tmp:
        copy = Path(tmp) / "tree"
        copy_tree(ROOT, copy)
        found = subprocess.run([str(args.python), "-c", "import gan; print(gan.__file__)"], cwd=copy, text=True,
                               capture_output=True, env={**_env(), "PYTHONPATH": str(copy)}).stdout.strip()
        if not found.startswith(str(copy)):
            print(f"the copy's packages are not the ones imported ({found}); stopping", file=sys.stderr)
            return 2
        for selection in dict.fromkeys(m.tests for m in chosen):  # the baseline: every selection passes unmutated
            code, seconds, tail = run_tests(copy, args.python, selection)
            print(f"baseline {' '.join(selection)}: exit {code} in {seconds:.0f} s ({tail})", flush=True)
            if code != 0:
                print("the unmutated tree fails this selection; fix it first", file=sys.stderr)
                return 2
        for m in chosen:
            path = copy / m.file
            original = path.read_text(encoding="utf-8")
            path.write_text(original.replace(m.old, m.new, 1), encoding="utf-8")
            try:
                code, seconds, tail = run_tests(copy, args.python, m.tests)
            finally:
                path.write_text(original, encoding="utf-8")
            rows.append((m, verdict(code), seconds, tail))
            print(f"{verdict(code):9s} {m.name:42s} {seconds:5.0f} s  {tail}", flush=True)
    caught = sum(r[1] == "caught" for r in rows)
    print(f"\n{caught} of {len(rows)} caught")
    if args.markdown:
        lines = ["| mutation | area | file | what it plants | tests run | result | first failing test |",
                 "|---|---|---|---|---|---|---|"]
        lines += [f"| `{m.name}` | {m.area} | `{m.file}` | {m.what} | `{' '.join(m.tests)}` | {result} | "
                  f"{_failing(tail)} |" for m, result, _, tail in rows]
        args.markdown.write_text("\n".join(lines) + f"\n\n{caught} of {len(rows)} caught.\n", encoding="utf-8")
    return 0 if caught == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
