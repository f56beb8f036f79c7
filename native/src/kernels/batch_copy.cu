// Batched device-to-device copy: one launch for many (dst, src, len) pieces.
struct KvpDesc { unsigned long long dst, src, len; };
struct KvpBatch { unsigned int n, pad; KvpDesc d[128]; };

extern "C" __global__ void __launch_bounds__(512) kvp_batch_copy(const KvpBatch b) {
  const unsigned int i = blockIdx.y;
  if (i >= b.n) return;
  const KvpDesc d = b.d[i];
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (((d.dst | d.src | d.len) & 15ull) == 0) {
    uint4 *dst = (uint4 *)d.dst;
    const uint4 *src = (const uint4 *)d.src;
    const unsigned long long n = d.len >> 4;
    // four independent 16-byte loads in flight per thread
    for (; t + 3 * stride < n; t += 4 * stride) {
      uint4 a = src[t], b1 = src[t + stride], c = src[t + 2 * stride], e = src[t + 3 * stride];
      dst[t] = a; dst[t + stride] = b1; dst[t + 2 * stride] = c; dst[t + 3 * stride] = e;
    }
    for (; t < n; t += stride) dst[t] = src[t];
  } else {
    unsigned char *dst = (unsigned char *)d.dst;
    const unsigned char *src = (const unsigned char *)d.src;
    for (; t < d.len; t += stride) dst[t] = src[t];
  }
}
