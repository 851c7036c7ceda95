"""The benchmark suite (`make bench`): runs every bench_*.py, prints the tables, writes
benchmarks/results/<machine>.json and the README tables between the BENCH markers.

Each bench module exposes `run(tiny: bool, device: str) -> dict` returning
{"name": ..., "rows": [...], "table": "<markdown>", "notes": "..."}.
--tiny proves the suite runs (CI) and writes nothing under results/ or README.md.
--tables-from FILE... times nothing: it rewrites the README tables from results files already written (e.g. the
JSON `make gpu-check` leaves in $OUT on the GPU machine, copied into benchmarks/results/ here).
"""
import argparse
import datetime
import importlib
import json
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402

BENCHES = ["bench_adam", "bench_reparam"]
GPU_BENCHES = ["bench_gpu"]  # configurations that only make sense on a GPU (issue 5)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="tiny sizes, no files written (CI smoke run)")
    ap.add_argument("--device", default="cuda" if os.environ.get("FUSED_KINGMA_BENCH_DEVICE") == "cuda" else "cpu")
    ap.add_argument("--only", nargs="*", help="run only these bench modules")
    ap.add_argument("--tables-from", nargs="+", metavar="JSON", help="only rewrite the README tables from these files")
    args = ap.parse_args()
    if args.tables_from:
        for path in args.tables_from:
            with open(path) as f:
                update_readme(json.load(f))
            print(f"README tables rewritten from {path}")
        return
    if args.device == "cuda":
        os.environ["FUSED_KINGMA_BENCH_DEVICE"] = "cuda"
    machine = common.machine_name()
    results = {
        "machine": machine,
        "cpu": common.cpu_model(),
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "benchmarks": {},
    }
    out = os.path.join(ROOT, "benchmarks", "results", f"{machine}.json")
    for name in args.only or BENCHES + (GPU_BENCHES if args.device == "cuda" else []):
        mod = importlib.import_module(name)
        print(f"\n## {name} on {machine}\n", flush=True)
        res = mod.run(tiny=args.tiny, device=args.device)
        res["date"] = results["date"]
        results["benchmarks"][name] = res
        print(res["table"])
        if res.get("notes"):
            print("\n" + res["notes"])
        if not args.tiny:  # after each bench: a run stopped at a time limit keeps what it finished
            save(results, out, keep_others=bool(args.only))
    if args.tiny:
        print("\n(--tiny: nothing written)")


def save(results, out, keep_others):
    """Write the results JSON (with keep_others, merged into the file's other benches) and the README tables."""
    merged = dict(results, benchmarks=dict(results["benchmarks"]))
    if keep_others and os.path.exists(out):  # keep the other benches' last results
        with open(out) as f:
            old = json.load(f)
        for res in old["benchmarks"].values():  # each kept table keeps the date it was measured on
            res.setdefault("date", old["date"])
        old["benchmarks"].update(merged["benchmarks"])
        merged["benchmarks"] = old["benchmarks"]
    with open(out, "w") as f:
        json.dump(merged, f, indent=1)
    print(f"\nwrote {out}", flush=True)
    update_readme(merged)


# Where a GPU's first tables go: a GPU has no markers until its first results (its name is known only then).
GPU_ANCHOR = "<!-- GPU-RESULTS -->"


def update_readme(results, path=os.path.join(ROOT, "README.md")):
    """Replace the text between <!-- BENCH:<machine>:<bench> --> and <!-- /BENCH --> markers. A GPU's bench
    without markers yet gets a heading and markers of its own, inserted before GPU_ANCHOR."""
    with open(path) as f:
        text = f.read()
    for name, res in results["benchmarks"].items():
        tag = f"<!-- BENCH:{results['machine']}:{name} -->"
        if tag not in text and results["device"] != "cpu" and GPU_ANCHOR in text:
            text = text.replace(GPU_ANCHOR, f"#### {results['device']}: {name}\n\n{tag}\n<!-- /BENCH -->\n\n"
                                + GPU_ANCHOR)
        if tag not in text:
            continue
        body = (
            f"{tag}\n_{results['cpu'] if results['device'] == 'cpu' else results['device']}, "
            f"{results['threads']} threads, torch {results['torch']}, {res.get('date', results['date'])}_\n\n"
            f"{res['table']}\n"
        )
        if res.get("notes"):
            body += "\n" + res["notes"] + "\n"
        text = re.sub(re.escape(tag) + r".*?<!-- /BENCH -->", lambda _: body + "<!-- /BENCH -->", text, flags=re.S)
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
