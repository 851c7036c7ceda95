#!/usr/bin/env python3
"""What a GPU run would otherwise be first to show, read off the compiler's output (.ci/nvcc_check.sh).

For each kernel of one .cu compiled for one arch, from ptxas's --resource-usage report and the kept PTX:
  - registers, stack frame and spills (printed as a table);
  - local memory: a stack frame means a register array indexed at run time or spilled registers, slow
    local loads and stores (the check fails unless the kernel is in ALLOWED_STACK, with the reason);
  - generic loads and stores: a data pointer the compiler cannot place in global memory (one read from a
    device-side table, say) gets generic LD/ST instead of LDG/STG (the check fails on any).

Usage: kernel_resources.py ARCH PTXAS_REPORT PTX_FILE
"""
import re
import subprocess
import sys

# (arch, kernel name as printed): why its local memory is not in the element loop.
ALLOWED_STACK = {
    ("sm_90", "kl_column_partials_kernel<double, false>"):
        "16 bytes spilled in the out-of-line slow path of the float64 exp (seen in the SASS), not the row loop",
}

SPACES = {"global", "param", "shared", "local", "const"}


def short_name(mangled):
    name = subprocess.run(["c++filt"], input=mangled, capture_output=True, text=True).stdout.strip() or mangled
    name = re.sub(r"fused_kingma::cuda::|\(anonymous namespace\)::|^void ", "", name)
    return re.sub(r"\(.*", "", name)


def resources(report):
    """{mangled kernel: (registers, stack bytes, spill store bytes, spill load bytes)} from ptxas -v."""
    kernels, props, fn = {}, {}, None
    current = None
    for line in report.splitlines():
        if m := re.search(r"Compiling entry function '(\S+)'", line):
            current = m.group(1)
        elif m := re.search(r"Function properties for (\S+)", line):
            fn = m.group(1)
        elif m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line):
            props[fn] = tuple(int(x) for x in m.groups())
        elif (m := re.search(r"Used (\d+) registers", line)) and current:
            kernels[current] = (int(m.group(1)), *props.get(current, (0, 0, 0)))
            current = None
    return kernels


def generic_accesses(ptx):
    """{mangled kernel: number of ld/st without a state space} from the PTX."""
    counts, current = {}, None
    for line in ptx.splitlines():
        if m := re.match(r"\s*(?:\.visible\s+)?\.entry\s+(\S+?)\(", line):
            current = m.group(1)
            counts[current] = 0
        elif current and (m := re.match(r"\s*(?:@!?%p\d+\s+)?(ld|st)\.([a-z0-9]+)", line)):
            if m.group(2) not in SPACES:
                counts[current] += 1
    return counts


def main(arch, report_path, ptx_path):
    kernels = resources(open(report_path).read())
    generic = generic_accesses(open(ptx_path).read())
    if not kernels:
        print(f"kernel-resources: no kernels in {report_path}", file=sys.stderr)
        return 1
    failures = []
    for mangled, (regs, stack, spill_st, spill_ld) in sorted(kernels.items(), key=lambda kv: short_name(kv[0])):
        name = short_name(mangled)
        note = ""
        if stack or spill_st or spill_ld:
            reason = ALLOWED_STACK.get((arch, name))
            if reason is None:
                failures.append(f"{name}: {stack} bytes stack frame, {spill_st}/{spill_ld} bytes spilled")
            note = f"  (allowed: {reason})" if reason else "  LOCAL MEMORY"
        if generic.get(mangled, 0):
            failures.append(f"{name}: {generic[mangled]} generic loads/stores in the PTX")
            note += f"  {generic[mangled]} GENERIC LD/ST"
        print(f"  {arch} {regs:4d} regs {stack:3d} B stack {spill_st:3d}/{spill_ld:<3d} B spills  {name}{note}")
    for f in failures:
        print(f"kernel-resources: FAIL {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
