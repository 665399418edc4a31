"""bench/gpu_check.sh's env step: versions, GPU, driver -> the JSON file named on the command line."""
import json
import platform
import subprocess
import sys

import torch

env = {"python": platform.python_version(), "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
       "cuda": torch.version.cuda, "platform": platform.platform()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    env.update(device=p.name, capability=f"{p.major}.{p.minor}", memory_bytes=p.total_memory,
               cudnn=torch.backends.cudnn.version())
try:
    env["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,power.limit",
                                        "--format=csv,noheader"], capture_output=True, text=True, timeout=10).stdout.strip()
except (OSError, subprocess.SubprocessError) as e:
    env["nvidia_smi"] = f"unavailable: {e}"
for name in ("triton", "diffusers", "transformers", "onnxruntime", "openvino", "xdist"):
    try:
        env[name] = getattr(__import__(name), "__version__", "present")
    except Exception:  # noqa: BLE001 - absent is a result
        env[name] = None
open(sys.argv[1], "w").write(json.dumps(env, indent=2) + "\n")
print(json.dumps(env))
