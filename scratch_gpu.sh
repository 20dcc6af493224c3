set -x
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
export PYTHONUNBUFFERED=1
python3 -c "import aihwkit, torch; print(aihwkit.__version__, torch.__version__)"
python3 benchmarks/bench_s4d.py --compute cuda 2>&1 | grep -v Warn | tee $OUT/bench_s4d_cuda.txt
python3 benchmarks/bench_quantized_recurrent.py --compute cuda 2>&1 | grep -v Warn | tee $OUT/bench_qrec_cuda.txt
python3 benchmarks/bench_fused_kernel.py --compute cuda --ref-steps 200 --with-mvm 2>&1 | grep -v Warn | tail -20 | tee $OUT/bench_fused_cuda.txt
python3 -m aimc_ssm train --d-model 64 --n-layers 2 --norm layer --device cuda --no-progress --run-dir /tmp/big 2>&1 | tail -12 | tee $OUT/train_big_cuda.txt
python3 -m aimc_ssm train --d-model 128 --d-state 64 --n-layers 4 --norm layer --prenorm true --dropout 0.1 --device cuda --no-progress --run-dir /tmp/big4 2>&1 | tail -12 | tee $OUT/train_big4_cuda.txt
