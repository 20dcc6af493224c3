"""S4D on analog crossbars (aihwkit): devices, the fused kernel and its layout and mappings, deployment,
drift compensation, closed-loop analysis of programmed kernels, hardware-aware noise and training, export.

Reaches a quantization only through its public API (`SSMQuantization.grid_steps`, `without_state_quantizer`)."""
