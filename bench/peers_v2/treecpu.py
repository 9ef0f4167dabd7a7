"""treecpu.py ROOT_PID  -> line 1: "TICKS NPROCS PIDS..." for ROOT_PID and all its descendants
                           line 2: "busy TOTAL IDLE" (/proc/stat, all CPUs)
   treecpu.py ROOT_PID --idle S
                        -> "MACHINE_BUSY_PCT SERVER_PCT OTHERS_PCT" over S seconds (% of all
                           CPUs; SERVER = the tree, OTHERS = everything else: foreign load)

TICKS = utime + stime + cutime + cstime (clock ticks, all threads) summed over the tree: a child
that exits and is reaped inside the tree between two snapshots moves its ticks into its parent's
cutime, so the difference of two snapshots still counts it.
"""

import os
import sys
import time


def stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    f = s[s.rfind(")") + 2 :].split()
    return int(f[1]), int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])  # ppid, ticks


def snapshot(root):
    procs = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = stat(d)
            if st:
                procs[int(d)] = st
    children = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = [], [root] if root in procs else []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    return sum(procs[p][1] for p in tree), sorted(tree), sum(cpu), cpu[3] + cpu[4]


root = int(sys.argv[1])
if len(sys.argv) > 3 and sys.argv[2] == "--idle":
    t0, _, tot0, idle0 = snapshot(root)
    time.sleep(float(sys.argv[3]))
    t1, _, tot1, idle1 = snapshot(root)
    total = max(1, tot1 - tot0)
    busy = 100 * (1 - (idle1 - idle0) / total)
    server = 100 * (t1 - t0) / total
    print(f"{busy:.0f} {server:.0f} {max(0.0, busy - server):.0f}")
else:
    ticks, tree, tot, idle = snapshot(root)
    print(ticks, len(tree), " ".join(map(str, tree)))
    print("busy", tot, idle)
