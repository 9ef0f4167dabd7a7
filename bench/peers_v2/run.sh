#!/usr/bin/env bash
# Side-by-side benchmark of the Open Inference Protocol V2 infer call over REST (wrk: POST
# /v2/models/digits/infer) and gRPC (h2load: inference.GRPCInferenceService/ModelInfer over h2c),
# all servers serving the SAME SavedModel ($W/models/digits/1), each on ports of its own:
#                                                                                     HTTP  gRPC
#   imgcls     the project ($PROJ): python -m service, defaults (IMGCLS_WORKERS unset = auto) 8810 8819
#   imgcls_w1  the same with IMGCLS_WORKERS=1                                                 8810 8819
#   imgcls_sm  the defaults with IMGCLS_RUNTIME=savedmodel (no compiled runtime; optional)    8810 8819
#   imgcls_int8 the defaults with IMGCLS_RUNTIME=openvino-int8 (optional)                    8810 8819
#   triton     Triton 2.51.0 (nvidia-pytriton 0.7.0's binary), python backend + TF, dynamic   8811 8812
#              batching (metrics 8813)
#   mlserver   MLServer 1.7.1, custom runtime (TF), adaptive batching (metrics 8816)          8814 8815
#   kserve     KServe 0.21 python ModelServer, custom Model (TF), no batcher (optional)       8817  -
#
# Bodies (bodies/, made by make_bodies.py, one digit image):
#   json  V2 JSON, input "images" UINT8 [1,28,28,3], output as JSON         (every server)
#   bin   binary tensor extension: same input as raw bytes, binary output    (servers whose check passes)
#   grpc  ModelInferRequest, same input in raw_input_contents, framed as on the wire (bench/grpc_load.py)
#         (servers with a gRPC port; KServe's stays off)
# gRPC load: h2load, -c C -m 1 (C connections of one stream each, like wrk's C connections), through
# `python -m bench.grpc_load run`: h2load counts an HTTP 200 as success whatever the grpc-status
# trailer says, so each run also checks the answers' DATA bytes against the size of an OK answer
# (an error is trailers-only), and the body is checked with grpcio and tritonclient.grpc before the
# load and again after it.
#
# Per server, one at a time: start (loopback only) -> wait until ready -> one infer per body must give
# the same top class as the SavedModel here (bodies/expected.json) -> 3 s warm-up -> wrk/h2load -c32 and -c64,
# DUR each; around each load run: CPU ticks of the server's process tree (/proc/PID/stat, utime+stime+
# cutime+cstime), machine busy %, batch counters -> stop by PID (TERM, then KILL, then leftovers by PID).
# Order: run 1 SERVERS as listed, run 2 reversed (interleaved). Before each measurement it waits (max
# ~60 s) until processes other than the server use <= QUIET_PCT % of the CPUs, and notes the level.
#
# usage:  bash $W/run.sh                 (about 12 min on a quiet machine, see README.md)
# env:    SERVERS="imgcls imgcls_w1 triton mlserver kserve" RUNS=2 DUR=10s WARM=3s CONCS="32 64"
#         BODIES="json bin grpc" BIN_CT=application/octet-stream TRITON_QUEUE_DELAY_US=0 MLS_MAX_BATCH_TIME=0.002
#         WARM_C=32 (warm-up connections; WARM=0 skips it) QUIET_PCT=12 (foreign CPU % considered quiet) OUT=$W/results-<timestamp>
# writes: $OUT.md (the tables) and $OUT/ (wrk and h2load outputs, server logs, raw TSV)
set -u
H=$(cd "$(dirname "$0")" && pwd)              # these scripts and templates
W=${V2_WORK:?set V2_WORK to a scratch folder for venvs, the model, bodies and results}
PROJ=${PROJ:?set PROJ to the project checkout}
PROJPY=${PROJPY:-$(cat $W/projpy 2>/dev/null || echo $W/proj/bin/python)}   # install.sh's choice
SERVERS=${SERVERS:-"imgcls imgcls_w1 triton mlserver kserve"}
RUNS=${RUNS:-2}
DUR=${DUR:-10s}
WARM=${WARM:-3s}
WARM_C=${WARM_C:-32}
CONCS=${CONCS:-"32 64"}
BODIES=${BODIES:-"json bin grpc"}
BIN_CT=${BIN_CT:-application/octet-stream}
QUIET_PCT=${QUIET_PCT:-12}
TRITON_QUEUE_DELAY_US=${TRITON_QUEUE_DELAY_US:-0}
MLS_MAX_BATCH_TIME=${MLS_MAX_BATCH_TIME:-0.002}
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=${OUT:-$W/results-$STAMP}
MD=$OUT.md
mkdir -p "$OUT"
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONDONTWRITEBYTECODE=1   # nothing written into $PROJ

need() { [ -e "$1" ] || { echo "missing $1 ($2)" >&2; exit 1; }; }
need "$PROJPY" "project venv: bash $H/install.sh"
need "$W/models/digits/1/metadata.json" "the model: see $H/README.md"
need "$W/bodies/json_uint8.json" "$PROJPY $H/make_bodies.py $W/models/digits/1 $W/bodies"
command -v wrk > /dev/null || { echo "wrk missing: apt-get install -y wrk" >&2; exit 1; }
case " $BODIES " in *" grpc "*)
  command -v h2load > /dev/null || { echo "h2load missing: apt-get install -y nghttp2-client" >&2; exit 1; }
  need "$W/bodies/grpc_uint8.bin" "$PROJPY $H/make_bodies.py $W/models/digits/1 $W/bodies";;
esac
EXPECT=$(python3 -c "import json; print(json.load(open('$W/bodies/expected.json'))['class'])")
HLEN_BIN=$(cat "$W/bodies/bin_uint8.hdrlen")
TSPY=$W/triton/lib/python3.11/site-packages

port_of() { case $1 in imgcls*) echo 8810;; triton) echo 8811;; mlserver) echo 8814;; kserve) echo 8817;; esac; }
grpc_port_of() { case $1 in imgcls*) echo 8819;; triton) echo 8812;; mlserver) echo 8815;; esac; }  # none: no gRPC
extra_ports() { case $1 in imgcls*) echo 8819;; triton) echo "8812 8813";; mlserver) echo "8815 8816";; kserve) echo 8818;; esac; }
url_of() { # server body -> the URL the load generator posts to
  case $2 in
    grpc) echo "http://127.0.0.1:$(grpc_port_of $1)/inference.GRPCInferenceService/ModelInfer" ;;
    *) echo "http://127.0.0.1:$(port_of $1)/v2/models/digits/infer" ;;
  esac
}
grpc_load() { (cd $PROJ && $PROJPY -m bench.grpc_load "$@"); }   # bench/grpc_load.py of the checkout
body_args() { # body -> "FILE CONTENT_TYPE HLEN"
  case $1 in
    json) echo "$W/bodies/json_uint8.json application/json -" ;;
    bin)  echo "$W/bodies/bin_uint8.bin $BIN_CT $HLEN_BIN" ;;
    grpc) echo "$W/bodies/grpc_uint8.bin application/grpc -" ;;
  esac
}
port_busy() { ss -ltnH "sport = :$1" | grep -q .; }
no_imgcls_env() { env | grep -o '^IMGCLS_[A-Z_0-9]*' | sed 's/^/-u /' | tr '\n' ' '; }

SERVER_PID=""
start_server() { # name run -> SERVER_PID; 0 when ready
  local name=$1 run=$2 log=$OUT/server_${1}_run$2.log port p t0
  port=$(port_of $name)
  for p in $port $(extra_ports $name); do
    if port_busy $p; then echo "   port $p busy: not starting $name" >&2; return 1; fi
  done
  t0=$(date +%s.%N)
  case $name in
    imgcls)    (cd $PROJ && exec env $(no_imgcls_env) IMGCLS_GRPC_PORT=$(grpc_port_of $name) $PROJPY -m service --models-dir $W/models --port $port) > "$log" 2>&1 & ;;
    imgcls_w1) (cd $PROJ && exec env $(no_imgcls_env) IMGCLS_GRPC_PORT=$(grpc_port_of $name) IMGCLS_WORKERS=1 $PROJPY -m service --models-dir $W/models --port $port) > "$log" 2>&1 & ;;
    imgcls_sm) (cd $PROJ && exec env $(no_imgcls_env) IMGCLS_GRPC_PORT=$(grpc_port_of $name) IMGCLS_RUNTIME=savedmodel $PROJPY -m service --models-dir $W/models --port $port) > "$log" 2>&1 & ;;
    imgcls_int8) (cd $PROJ && exec env $(no_imgcls_env) IMGCLS_GRPC_PORT=$(grpc_port_of $name) IMGCLS_RUNTIME=openvino-int8 $PROJPY -m service --models-dir $W/models --port $port) > "$log" 2>&1 & ;;
    triton)
      rm -rf "$OUT/triton_repo" && cp -r $H/triton_repo "$OUT/triton_repo" && sed -i "s#@MODEL_DIR@#$W/models/digits/1#" "$OUT/triton_repo/digits/config.pbtxt"
      sed -i "s/max_queue_delay_microseconds: [0-9]*/max_queue_delay_microseconds: $TRITON_QUEUE_DELAY_US/" "$OUT/triton_repo/digits/config.pbtxt"
      (LD_LIBRARY_PATH=$TSPY/nvidia_pytriton.libs PEER_SITE_PACKAGES=$TSPY exec $W/triton_dist/bin/tritonserver \
        --model-repository="$OUT/triton_repo" --backend-directory=$W/triton_dist/backends \
        --cache-directory=$W/triton_dist/caches --http-address=127.0.0.1 --http-port=8811 \
        --grpc-address=127.0.0.1 --grpc-port=8812 --metrics-address=127.0.0.1 --metrics-port=8813) > "$log" 2>&1 & ;;
    mlserver)
      rm -rf "$OUT/mlserver_repo" && cp -r $H/mlserver_repo "$OUT/mlserver_repo" && sed -i "s#@MODEL_DIR@#$W/models/digits/1#" "$OUT/mlserver_repo/digits/model-settings.json" && rm -f "$OUT/.mls_stats"
      sed -i "s/\"max_batch_time\": [0-9.]*/\"max_batch_time\": $MLS_MAX_BATCH_TIME/" "$OUT/mlserver_repo/digits/model-settings.json"
      (cd "$OUT/mlserver_repo" && MLS_STATS=$OUT/.mls_stats exec $W/mlserver/bin/mlserver start .) > "$log" 2>&1 & ;;
    kserve)
      (cd $H/kserve_app && exec $W/kserve/bin/python model.py --http_port 8817 --grpc_port 8818 \
        --model_name digits --model_dir $W/models/digits/1) > "$log" 2>&1 & ;;
  esac
  SERVER_PID=$!
  local ok=0 i n want
  for i in $(seq 600); do   # up to ~150 s
    kill -0 $SERVER_PID 2>/dev/null || { echo "   $name died while starting, see $log" >&2; return 1; }
    case $name in
      imgcls*) # auto starts a probe worker first, then decides on N workers: ready when the workers
               # after that decision all started their app, /readyz is 200 and imgcls_model_ready
               # (the minimum over live workers) is 1
        want=$(python3 - "$log" <<'PY'
import re, sys
t = open(sys.argv[1], errors="replace").read()
m = re.search(r"so one worker|so (\d+) workers|starting (\d+) workers", t)
if m:
    n = 1 if m.group(0) == "so one worker" else int(m.group(1) or m.group(2))
    print(n, t[m.end():].count("Application startup complete"))
elif "measuring the default model" not in t:      # a fixed worker count: no probe
    m = re.search(r"up to (\d+) workers? on", t)
    print(int(m.group(1)) if m else 1, t.count("Application startup complete"))
else:
    print(1, 0)
PY
)
        read -r n p <<< "$want"
        [ "${p:-0}" -ge "${n:-1}" ] \
          && [ "$(curl -s -m 5 -o /dev/null -w '%{http_code}' http://127.0.0.1:$port/readyz)" = 200 ] \
          && curl -s -m 5 http://127.0.0.1:$port/metrics | grep -q -E '^imgcls_model_ready(\{\})? 1(\.0)?$' && { ok=1; break; } ;;
      *) [ "$(curl -s -m 5 -o /dev/null -w '%{http_code}' http://127.0.0.1:$port/v2/models/digits/ready)" = 200 ] && { ok=1; break; } ;;
    esac
    sleep 0.25
  done
  [ $ok = 1 ] || { echo "   $name not ready after ~150 s, see $log" >&2; return 1; }
  local note="" nprocs
  nprocs=$(python3 $H/treecpu.py $SERVER_PID | awk 'NR == 1 { print $2 }')
  case $name in imgcls*) note=$(grep -o -E "so (one worker|[0-9]+ workers)" "$log" | tail -1 | sed 's/^so //');; esac
  printf "%s\t%s\t%.1f\t%s\t%s\n" "$run" "$name" "$(echo "$(date +%s.%N) - $t0" | bc)" "$nprocs" "${note:--}" >> "$OUT/startup.tsv"
  return 0
}

tree_pids() { python3 $H/treecpu.py $1 | awk 'NR == 1 { $1 = ""; $2 = ""; print }'; }
pstart() { awk '{ s = $0; sub(/.*\) /, "", s); split(s, f, " "); print f[20] }' /proc/$1/stat 2>/dev/null; }
ours() { [ -n "$(pstart ${1%:*})" ] && [ "$(pstart ${1%:*})" = "${1#*:}" ]; }  # pid:starttime still that process?
stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  local tree="" p shm live
  for p in $(tree_pids $SERVER_PID); do tree="$tree $p:$(pstart $p)"; done
  # Triton's python stub names its shared-memory region on its command line: remove it if left behind
  shm=$(for p in $tree; do tr '\0' '\n' < /proc/${p%:*}/cmdline 2>/dev/null | grep '^triton_python_backend_shm_region_'; done)
  kill -TERM $SERVER_PID 2>/dev/null
  for _ in $(seq 80); do kill -0 $SERVER_PID 2>/dev/null || break; sleep 0.5; done
  kill -0 $SERVER_PID 2>/dev/null && { echo "   $SERVER_PID still up 40 s after TERM: KILL" >&2; kill -KILL $SERVER_PID 2>/dev/null; }
  wait $SERVER_PID 2>/dev/null
  for _ in $(seq 20); do   # children (multiprocessing's resource tracker, ...) exit on their own: up to 5 s
    live=""; for p in $tree; do ours $p && live="$live $p"; done
    [ -z "$live" ] && break; sleep 0.25
  done
  if [ -n "$live" ]; then
    for p in $live; do ours $p && { echo "   leftover pid ${p%:*} ($(tr '\0' ' ' < /proc/${p%:*}/cmdline 2>/dev/null | cut -c1-80)): TERM" >&2; kill -TERM ${p%:*} 2>/dev/null; }; done
    sleep 2
    for p in $live; do ours $p && { echo "   leftover pid ${p%:*}: KILL" >&2; kill -KILL ${p%:*} 2>/dev/null; }; done
  fi
  for p in $shm; do [ -e /dev/shm/$p ] && { echo "   removing /dev/shm/$p" >&2; rm -f /dev/shm/$p; }; done
  SERVER_PID=""
}
trap 'stop_server; exit 130' INT TERM

wait_quiet() { # -> "OTHERS SERVER": % of all CPUs used by everything but the server / by the server
  # (idle) over the last 1 s sample; waits up to ~60 s for OTHERS <= QUIET_PCT (foreign load)
  local r
  for _ in $(seq 30); do
    r=$(python3 $H/treecpu.py $SERVER_PID --idle 1)
    [ "$(echo $r | cut -d' ' -f3)" -le "$QUIET_PCT" ] && break
    sleep 1
  done
  echo "$(echo $r | cut -d' ' -f3) $(echo $r | cut -d' ' -f2)"
}
batch_counts() { # server -> "items batches" (cumulative) or empty
  local port; port=$(port_of $1)
  case $1 in
    imgcls*) curl -s -m 5 http://127.0.0.1:$port/metrics | awk '/^imgcls_batch_size_sum/{s+=$NF; f=1} /^imgcls_batch_size_count/{c+=$NF} END{if (f) print s, c}' ;;
    triton)  curl -s -m 5 http://127.0.0.1:$port/v2/models/digits/stats | python3 -c 'import json,sys; s=json.load(sys.stdin)["model_stats"][0]; print(s["inference_count"], s["execution_count"])' 2>/dev/null ;;
    mlserver) sleep 0.6; [ -s "$OUT/.mls_stats" ] && cat "$OUT/.mls_stats" ;;
  esac
}

printf "run\tserver\tbody\tconc\treq_s\tp50_ms\tp99_ms\trequests\tnon2xx\tsock_err\tcpu_ms_per_req\tmean_batch\tprocs\tforeign_pct_before\tbusy_pct_during\twrk_cpu_s\tserver_idle_pct\n" > "$OUT/results.tsv"
printf "run\tserver\tstartup_s\tprocs\tnote\n" > "$OUT/startup.tsv"
printf "run\tserver\tbody\tverdict\n" > "$OUT/checks.tsv"
{
  echo "settings: SERVERS=\"$SERVERS\" RUNS=$RUNS DUR=$DUR WARM=$WARM (c=$WARM_C) CONCS=\"$CONCS\" BODIES=\"$BODIES\" BIN_CT=$BIN_CT"
  echo "TRITON_QUEUE_DELAY_US=$TRITON_QUEUE_DELAY_US MLS_MAX_BATCH_TIME=$MLS_MAX_BATCH_TIME expected class $EXPECT"
  echo "host: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), project $(git -C $PROJ rev-parse --short HEAD 2>/dev/null)"
} > "$OUT/settings.txt"
cat "$OUT/settings.txt" >&2

for run in $(seq 1 $RUNS); do
  order=$SERVERS
  [ $((run % 2)) -eq 0 ] && order=$(echo $SERVERS | tr ' ' '\n' | tac | tr '\n' ' ')
  for srv in $order; do
    echo "== run $run: $srv" >&2
    if ! start_server $srv $run; then
      printf "%s\t%s\t-\tdid not start\n" $run $srv >> "$OUT/checks.tsv"; stop_server; continue
    fi
    for body in $BODIES; do
      read -r bfile ct hlen <<< "$(body_args $body)"
      [ "$hlen" = - ] && hlen=""
      url=$(url_of $srv $body)
      okb=""
      if [ $body = grpc ]; then
        if [ -z "$(grpc_port_of $srv)" ]; then
          printf "%s\t%s\t%s\t%s\n" $run $srv $body "no gRPC endpoint here" >> "$OUT/checks.tsv"; continue
        fi
        for _ in $(seq 20); do   # the gRPC server may start listening a moment after HTTP is ready
          verdict=$(grpc_load check 127.0.0.1:$(grpc_port_of $srv) "$bfile" --expect $EXPECT 2>&1); rc=$?
          [ $rc = 2 ] || break; sleep 0.5
        done
        okb=$(echo "$verdict" | grep -o -E 'gRPC answer [0-9]+ B' | awk '{ print $3 }')
      else
        verdict=$($PROJPY $H/check.py "$url" "$bfile" "$ct" "$hlen" "$EXPECT" 2>&1); rc=$?
      fi
      printf "%s\t%s\t%s\t%s\n" $run $srv $body "$verdict" >> "$OUT/checks.tsv"
      if [ $rc != 0 ]; then echo "   $body: NOT MEASURED: $verdict" >&2; continue; fi
      echo "   $body ok: $verdict" >&2
      if [ "$WARM" != 0 ]; then   # warm-up
        if [ $body = grpc ]; then
          grpc_load run "$url" "$bfile" --concurrency $WARM_C --duration ${WARM%s} --ok-bytes $okb > /dev/null 2>&1
        else
          BODY=$bfile CT=$ct HLEN=$hlen wrk -t1 -c$WARM_C -d$WARM --timeout 5s -s $H/post.lua "$url" > /dev/null 2>&1
        fi
      fi
      for c in $CONCS; do
        before=$(wait_quiet)
        tool=wrk; [ $body = grpc ] && tool=h2load
        f=$OUT/${tool}_run${run}_${srv}_${body}_c${c}.txt
        b0=$(batch_counts $srv)
        a=($(python3 $H/treecpu.py $SERVER_PID | tr '\n' ' '))
        if [ $body = grpc ]; then   # one JSON line (bench.loadgen.LevelResult), h2load's CPU in it
          grpc_load run "$url" "$bfile" --concurrency $c --duration ${DUR%s} --ok-bytes $okb > "$f" 2>&1
        else
          BODY=$bfile CT=$ct HLEN=$hlen /usr/bin/time -f "%U %S" -o "$f.time" \
            wrk -t1 -c$c -d$DUR --latency --timeout 5s -s $H/post.lua "$url" > "$f" 2>&1
        fi
        b=($(python3 $H/treecpu.py $SERVER_PID | tr '\n' ' '))
        b1=$(batch_counts $srv)
        # a/b: TICKS NPROCS PIDS... busy TOTAL IDLE  (the last three fields)
        na=${#a[@]}; nb=${#b[@]}
        stats=$(python3 - "$f" "${a[0]}" "${b[0]}" "${b[1]}" "${a[$((na-2))]}" "${a[$((na-1))]}" "${b[$((nb-2))]}" "${b[$((nb-1))]}" "$b0" "$b1" "$f.time" <<'PY'
import json, os, re, sys
f, ta, tb, procs, tota, idla, totb, idlb, b0, b1, tfile = sys.argv[1:12]
t = open(f).read()
def ms(v):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", v)
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[m.group(2)]
wrkcpu = None
try:
    if t.lstrip().startswith("{"):  # h2load through bench.grpc_load: rate of OK answers only
        j = json.loads(t.strip().splitlines()[-1])
        e = j["errors"]
        rps, lat, req = j["rps"], {"50": j["p50_ms"], "99": j["p99_ms"]}, j["requests"]
        non2xx = e["status"] + e["grpc"]          # answered, but not an OK gRPC answer
        errs = e["failed"] + e["errored"] + e["timeout"]
        wrkcpu = f"{j['loadgen_cpu_s']:.1f}"
    else:
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
        lat = {p: ms(v) for p, v in re.findall(r"^\s+(50|99)%\s+(\S+)", t, re.M)}
        req = int(re.search(r"(\d+) requests in", t).group(1))
        m = re.search(r"Non-2xx or 3xx responses: (\d+)", t); non2xx = int(m.group(1)) if m else 0
        m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
        errs = sum(map(int, m.groups())) if m else 0
except Exception:
    print("\t".join(["-"] * 12)); sys.exit()
hz = os.sysconf("SC_CLK_TCK")
cpu = (int(tb) - int(ta)) / hz
busy = 100 * (1 - (int(idlb) - int(idla)) / max(1, int(totb) - int(tota)))
mb = "-"
if b0 and b1:
    i0, n0 = map(float, b0.split()); i1, n1 = map(float, b1.split())
    if n1 > n0: mb = f"{(i1 - i0) / (n1 - n0):.1f}"
if wrkcpu is None:
    try:
        u, s = open(tfile).read().split()[-2:]; wrkcpu = f"{float(u) + float(s):.1f}"
    except Exception:
        wrkcpu = "-"
print("\t".join([f"{rps:.0f}", f"{lat['50']:.2f}", f"{lat['99']:.2f}", str(req), str(non2xx), str(errs),
                 f"{1000 * cpu / max(req, 1):.3f}", mb, procs, "", f"{busy:.0f}", wrkcpu]))
PY
)
        rm -f "$f.time"
        row=$(echo "$stats" | awk -F'\t' -v OFS='\t' -v bb="${before% *}" -v si="${before#* }" '{$10=bb; print $0, si}')
        printf "%s\t%s\t%s\t%s\t%s\n" $run $srv $body $c "$row" | tee -a "$OUT/results.tsv" >&2
      done
      # the same check again after the load: a server that went wrong under it shows here
      if [ $body = grpc ]; then
        verdict=$(grpc_load check 127.0.0.1:$(grpc_port_of $srv) "$bfile" --expect $EXPECT 2>&1)
      else
        verdict=$($PROJPY $H/check.py "$url" "$bfile" "$ct" "$hlen" "$EXPECT" 2>&1)
      fi
      rc=$?
      printf "%s\t%s\t%s\t%s\n" $run $srv "$body, after" "$verdict" >> "$OUT/checks.tsv"
      [ $rc = 0 ] || echo "   $body: the check AFTER the load failed: $verdict" >&2
    done
    stop_server
  done
done
python3 $H/summarize.py "$OUT" > "$MD"
echo "results: $MD (raw: $OUT/)" >&2
cat "$MD"
