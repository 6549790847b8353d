"""A Pod's hosts file is rewritten in place while the Pod's resolver reads it: no read may
find it empty or missing a Service that both the old and the new file name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mlops_operator.devcluster.network import hosts_file, rewrite_in_place

READS = 20_000

# A resolver stand-in in its own process (as the Pod's is): it reads the whole file as often as
# it can and counts the reads in which the line of the Service it wants is not whole.
READER = """
import sys
path, wanted, reads = sys.argv[1], sys.argv[2], int(sys.argv[3])
print("reading", flush=True)
missing = 0
for _ in range(reads):
    with open(path, "rb") as handle:
        if wanted.encode() not in handle.read().splitlines():
            missing += 1
print(missing, flush=True)
"""


def test_a_reader_never_sees_the_hosts_file_empty_or_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    wanted = {("ns", "champion"): "198.19.0.10"}
    many = dict(wanted) | {("ns", f"other-{i}"): f"198.19.0.{20 + i}" for i in range(30)}
    texts = [hosts_file("198.18.0.5", "router", "ns", services) for services in (many, wanted)]
    line = "198.19.0.10\tchampion.ns.svc champion.ns.svc.cluster.local champion"
    assert all(line in text.splitlines() for text in texts)
    rewrite_in_place(path, texts[0])
    reader = subprocess.Popen([sys.executable, "-c", READER, str(path), line, str(READS)],
                              stdout=subprocess.PIPE, text=True)
    assert reader.stdout.readline().strip() == "reading"
    rewrites = 0
    while reader.poll() is None:
        rewrite_in_place(path, texts[rewrites % 2])  # long, short, long, ...: the file shrinks and grows
        rewrites += 1
    missing = int(reader.stdout.read().strip())
    assert rewrites > 100 and missing == 0, f"{missing} of {READS} reads missed the line ({rewrites} rewrites)"


def test_the_file_ends_as_the_new_text_with_only_blank_lines_after_it(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    rewrite_in_place(path, "1.2.3.4\ta-long-name.ns.svc\n")
    rewrite_in_place(path, "1.2.3.5\tb.ns.svc\n")
    content = path.read_text()
    assert content.startswith("1.2.3.5\tb.ns.svc\n") and content.strip() == "1.2.3.5\tb.ns.svc"
    inode = path.stat().st_ino
    rewrite_in_place(path, "1.2.3.6\tc-longer-than-both.ns.svc\n")
    assert path.read_text() == "1.2.3.6\tc-longer-than-both.ns.svc\n" and path.stat().st_ino == inode
