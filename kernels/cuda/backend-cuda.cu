// CUDA backend entry point. This stage builds the toolchain path (nvcc, cudart, cuBLAS link) and the device
// probe; the op kernels arrive with the CUDA backend issue. Until then vlm_backend_cuda_new reports
// VLM_EUNSUPPORTED with a message saying why, and callers fall back to the CPU backend.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "kernels/backend-impl.h"

extern "C" int vlm__cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); // clear the sticky "no driver" error
        return 0;
    }
    return n;
}

extern "C" int vlm__backend_cuda_new(int device, struct vlm_backend **out, struct vlm_diag *diag) {
    (void)out;
    int n = vlm__cuda_device_count();
    if (n == 0) {
        return vlm_diag_set(diag, VLM_EUNSUPPORTED, "cuda: no CUDA device or driver available");
    }
    if (device < 0 || device >= n) {
        return vlm_diag_set(diag, VLM_EINVAL, "cuda: device %d out of range (found %d)", device, n);
    }
    return vlm_diag_set(diag, VLM_EUNSUPPORTED, "cuda: device %d found, but the CUDA op kernels are not in this "
                                                "build yet; use the CPU backend", device);
}
