"""Per-module mutation scores from `mutmut results --all true` on stdin.

score = (killed + timeout + segfault) / (checked - equivalent), where the mutants listed in
tests/mutation/equivalent.txt (one name per line, '#' comments) are judged equivalent, and those
in tests/mutation/killed_on_standin.txt count as killed (by the stand-in tests the run skips).
"""
import collections
import pathlib
import re
import sys

KILLED = {"killed", "timeout", "segfault", "caught by type check"}
here = pathlib.Path(__file__).parent


def names(path):
    out = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.add(line)
    return out


equivalent = names(here / "equivalent.txt")
killed_elsewhere = names(here / "killed_on_standin.txt")   # layout-only mutants, killed by the stand-in tests

counts = collections.defaultdict(collections.Counter)
survivors = []
for line in sys.stdin:
    m = re.match(r"\s*(\S+): (.+)$", line)
    if not m:
        continue
    name, status = m.group(1), m.group(2).strip()
    module = re.split(r"\.x[_ǁ]", name, maxsplit=1)[0]
    if status == "not checked":
        counts[module]["not checked"] += 1
        continue
    if name in equivalent and status == "survived":
        counts[module]["equivalent"] += 1
    elif status in KILLED or (name in killed_elsewhere and status == "survived"):
        counts[module]["killed"] += 1
    else:
        counts[module][status] += 1
        survivors.append(f"{name}: {status}")

total = collections.Counter()
print(f"{'module':32} {'killed':>7} {'survived':>8} {'equiv':>6} {'other':>6} {'unchecked':>9} {'score':>7}")
for module in sorted(counts):
    c = counts[module]
    total.update(c)
    other = sum(v for k, v in c.items() if k not in ("killed", "survived", "equivalent", "not checked"))
    judged = c["killed"] + c["survived"] + other
    score = f"{100 * c['killed'] / judged:6.1f}%" if judged else "     -"
    print(f"{module:32} {c['killed']:7} {c['survived']:8} {c['equivalent']:6} {other:6} {c['not checked']:9} {score}")
other = sum(v for k, v in total.items() if k not in ("killed", "survived", "equivalent", "not checked"))
judged = total["killed"] + total["survived"] + other
print(f"{'all':32} {total['killed']:7} {total['survived']:8} {total['equivalent']:6} {other:6} "
      f"{total['not checked']:9} {100 * total['killed'] / max(judged, 1):6.1f}%")
if survivors:
    print("\nnot killed, not judged equivalent:")
    print("\n".join("  " + s for s in survivors))
