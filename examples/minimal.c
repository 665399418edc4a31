/* The smallest embedding of asymvq: open an engines directory, decode one latent with the
 * asymmetric decoder (image + mask), print the output shape, close. Plain C99; see
 * examples/CMakeLists.txt for the build with find_package(asymvq_host).
 *
 *   minimal ENGINES_DIR   (an `asymvq export --format aoti` directory with a "decoder") */
#include <asymvq/asymvq.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s ENGINES_DIR\n", argv[0]);
    return 2;
  }
  asymvq_host* host = NULL;
  if (asymvq_open(argv[1], "cpu", &host) != ASYMVQ_OK) {
    fprintf(stderr, "open: %s\n", asymvq_last_error());
    return 1;
  }
  enum { B = 1, H = 64, W = 64 };
  static float z[B * 4 * (H / 8) * (W / 8)], img[B * 3 * H * W], mask[B * 1 * H * W];
  for (size_t i = 0; i < sizeof z / sizeof *z; ++i) z[i] = (float)((int)(i % 7) - 3) / 3.0f;
  for (size_t i = 0; i < sizeof img / sizeof *img; ++i) img[i] = (float)((int)(i % 11) - 5) / 5.0f; /* in [-1, 1] */
  for (size_t i = 0; i < sizeof mask / sizeof *mask; ++i) mask[i] = (i % W) < W / 2;         /* left half: hole */
  const int64_t zs[] = {B, 4, H / 8, W / 8}, is[] = {B, 3, H, W}, ms[] = {B, 1, H, W};
  asymvq_tensor latents = {z, zs, 4, ASYMVQ_FLOAT32}, image = {img, is, 4, ASYMVQ_FLOAT32}, hole = {mask, ms, 4, ASYMVQ_FLOAT32};
  asymvq_output out = {0};
  asymvq_status s = asymvq_decode(host, &latents, &image, &hole, &out);
  if (s != ASYMVQ_OK) {
    fprintf(stderr, "decode: %s: %s\n", asymvq_status_name(s), asymvq_last_error());
    asymvq_close(host);
    return 1;
  }
  double sum = 0;
  for (int64_t i = 0; i < out.numel; ++i) sum += out.data[i];
  printf("asymvq %s: decoded (%lld, %lld, %lld, %lld), mean %.6f\n", asymvq_version(), (long long)out.shape[0],
         (long long)out.shape[1], (long long)out.shape[2], (long long)out.shape[3], sum / (double)out.numel);
  asymvq_output_free(&out);
  asymvq_close(host);
  return 0;
}
