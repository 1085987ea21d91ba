"""Quantization of TD-MPC2 world models: the TD-MPC-Opt paper's recipes and proper post-training quantization.

- :mod:`.recipes`: the schemes (paper-fp16/mixed/int8 as released; our fp32/fp16/bf16/int8/int8-dynamic/mixed)
  and the state dicts they store;
- :mod:`.int8`: per-channel int8, GPTQ rounding, int8 matmuls and the int8 inference modules;
- :mod:`.calibration`: calibration rollouts / inputs and the layer Hessians GPTQ uses;
- :mod:`.files`: writing quantized files, deployable twins and safetensors exports (all read back by
  :func:`~tdmpc_opt_lib.checkpoints.load_checkpoint`);
- :mod:`.analysis`: prediction errors, layer sensitivity and the mixed plan, latency, the quantization
  table and recorded-run statistics.
"""
from .analysis import (MIXED_BUDGET_RATIO, RECORDED_COLUMNS, forward_latency_ms, layer_sensitivity, mixed_plan,
                       paired_difference, planning_latency_ms, pooled_runs, prediction_errors, predictions,
                       quantization_table, recorded_pooled, recorded_run, recorded_table, relative_errors,
                       relative_rms)
from .calibration import (CALIBRATION_ENV_SEED, Inputs, calibration_hessians, calibration_inputs,
                          calibration_rollouts, layer_hessians)
from .files import (deploy_path, export_safetensors, quantized_checkpoint, resolve_defaults, save_paper,
                    save_quantized, write_variant)
from .int8 import (INT8, Int8EnsembleLinear, Int8Linear, Int8NormedLinear, dequantize_per_channel, gptq_per_channel,
                   int8_matmul, matmul_layers, observation_layers, quantize_per_channel, to_int8_dynamic)
from .recipes import (MiB, OUR_SCHEMES, PAPER_RECIPES, PAPER_SCHEMES, SCHEMES, STORAGE_DTYPES, calibrated,
                      dequantize_state, paper_fp16, paper_int8, paper_mixed, quantize_state, tensor_bytes)
