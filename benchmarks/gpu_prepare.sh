#!/usr/bin/env bash
# Prepares the one GPU run (benchmarks/gpu_run.sh) where a device machine is lent: that machine reaches no
# network, and its image has torch, transformers, accelerate, peft, onnxruntime and opencv but not the rest of
# facestudio's needs. Run here, in the repository root: the Python 3.12 wheels facestudio needs and the image
# lacks go to .gpu/whl (versions from constraints.txt), and dlib's face-recognition ResNet file, the only file
# of face-recognition-models the benchmarks read (its sdist is 100 MB), to .gpu/site. About 52 MB, inside the
# 64 MiB a call may carry. Then: run(command="bash benchmarks/gpu_run.sh", carry=[".gpu"]).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
pin() { grep -i -m1 "^$1==" constraints.txt || { echo "gpu_prepare: $1 is not in constraints.txt" >&2; exit 2; }; }
wheels=(diffusers dlib-bin c2pa-python optimum-quanto cryptography cffi pycparser toml importlib-metadata)
rm -rf .gpu/whl && mkdir -p .gpu/whl .gpu/site/face_recognition_models/models
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .gpu/whl \
    $(for name in "${wheels[@]}"; do pin "$name"; done)
python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python  # the environment facestudio is installed in
resnet=$("$python" -c 'from facestudio.faces.model_files import dlib_model_file as f
print(f("dlib_face_recognition_resnet_model_v1.dat"))')
cp "$resnet" .gpu/site/face_recognition_models/models/
du -sh .gpu
