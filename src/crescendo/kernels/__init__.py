"""Pure tensor kernels: number formats, quantizers and pruners, with no hooks, devices or logging."""
