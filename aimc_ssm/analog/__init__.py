"""S4D on analog crossbars (aihwkit): devices, the fused kernel and its layout, deployment, hardware-aware noise, export.

Reaches a quantization only through its public API (`SSMQuantization.grid_steps`, `without_state_quantizer`)."""
