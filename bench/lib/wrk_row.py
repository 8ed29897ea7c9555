"""One wrk --latency output as a TSV row: NAME SCENARIO req/s p50_ms p99_ms non-2xx socket-errors.

Usage: python3 bench/lib/wrk_row.py NAME SCENARIO WRK_OUTPUT_FILE
"""
import re, sys
name, scenario, path = sys.argv[1:4]
text = open(path).read()
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    n, u = float(m.group(1)), m.group(2)
    return n / 1000 if u == "us" else n * 1000 if u == "s" else n
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
sock = re.search(r"Socket errors: (.*)", text)
bad = (int(errors.group(1)) if errors else 0)
print(f"{name}\t{scenario}\t{rps:.0f}\t{p50:.3f}\t{p99:.3f}\t{bad}\t{sock.group(1) if sock else ''}")
