"""Collection on the training thread: hooks' device-side statistics (probes, kernels, native kernels, update
copies), the one batched transfer, step bookkeeping, memory readers, AMP and distributed helpers."""
