#!/usr/bin/env python3
"""Writes the largest documents `intune-attest report` accepts (just under
64 MiB each), built to cost it as much as they can, into the folder given
(default: target/report-inputs):

- windows.json: a result with 33.5 million writes_per_window entries;
- long.json: a result whose devices have every text field at its longest
  (characters that HTML-escape to six bytes);
- many.json: a result with 754,018 small devices;
- status.json: a status document with 31,789 devices and long read errors.

Then, for each result:
  /usr/bin/time -f %M intune-attest report --result R --status status.json --out page.html
"""
import os
import sys

CAP = 64 * 1024 * 1024 - 1024
out = sys.argv[1] if len(sys.argv) > 1 else "target/report-inputs"
os.makedirs(out, exist_ok=True)
head = ('{"schema_version":"1","correlation_id":"big","status":"failed","started_at":"a","finished_at":"b",'
        '"summary":{"requested":1},"stats":{"write_budget":190,"throttle_window_ms":20000,"writes_per_window":[')


def write(name, parts):
    with open(os.path.join(out, name), "w") as f:
        for p in parts:
            f.write(p)


n = (CAP - len(head) - 20) // 2
write("windows.json", [head, ",".join(["1"] * n), ']},"devices":[]}'])

long = '\\"' * 1000
short = '\\"' * 200
device = ('{"device_id":"%s","kind":"%s","device_name":"%s","outcome":"failed","reason":"%s","reason_code":"%s",'
          '"http_status":400,"error_code":"%s","message":"%s","request_id":"%s"}'
          % (short, short, short, long, short, short, long, short))
k = (CAP - len(head) - 30) // (len(device) + 1)
write("long.json", [head, ']},"devices":[', ",".join([device] * k), "]}"])

small = '{"device_id":"00000000-0000-4000-8000-000000000001","kind":"managed","outcome":"failed"}'
k = (CAP - len(head) - 30) // (len(small) + 1)
write("many.json", [head, ']},"devices":[', ",".join([small] * k), "]}"])

status_head = '{"correlation_id":"big","checked_at":"x","summary":{"devices":1},"devices":['
status_device = ('{"device_id":"00000000-0000-4000-8000-000000000001","kind":"managed","action_state":"pending",'
                 '"read_error":"%s"}' % long)
k = (CAP - len(status_head) - 10) // (len(status_device) + 1)
write("status.json", [status_head, ",".join([status_device] * k), "]}"])
