/*
 * asymvq host: a plain C API over AOTInductor engines written by `asymvq export --format aoti`.
 *
 * Open an engines directory (its manifest.json is verified first: the sha256 of every
 * artifact file, each component's I/O names, dtypes and shape ranges), then decode VAE-space
 * latents with the asymmetric decoder, or run a whole Stable Diffusion inpainting (or
 * text-to-image) job, then close.
 *
 * Conventions (the Python API's):
 *   latents  (B, 4, h, w) float32, VAE space (already divided by the scaling factor 0.18215)
 *   image    (B, 3, 8h, 8w) float32 in [-1, 1], the unmasked source
 *   mask     (B or 1, 1, 8h, 8w) float32, 1 = region to regenerate (binarised at 0.5)
 *   output   (B, 3, 8h, 8w) float32, the decoder's sample in [-1, 1] (not clamped)
 *
 * Errors: every function returns an asymvq_status; nothing throws across this boundary and
 * nothing calls exit(). On failure, asymvq_last_error() returns a one-line message naming the
 * argument, the expected form and what was given. The message is thread-local: it belongs to
 * the calling thread and stays valid until that thread's next asymvq_* call.
 *
 * Ownership: input tensors are caller-owned views, read only during the call. Output tensors
 * are allocated by the library; release them with asymvq_output_free(). A handle is released
 * with asymvq_close().
 *
 * Thread safety: one handle may be used from several threads at once; calls on one handle are
 * serialised by the handle's own lock (the engines share one set of buffers). For calls that
 * run in parallel, open one handle per thread. Different handles share nothing.
 */
#ifndef ASYMVQ_ASYMVQ_H
#define ASYMVQ_ASYMVQ_H

#include <stddef.h>
#include <stdint.h>

#define ASYMVQ_VERSION_MAJOR 0
#define ASYMVQ_VERSION_MINOR 1
#define ASYMVQ_VERSION_PATCH 0
/* Bumped whenever a struct below or a function's meaning changes incompatibly. */
#define ASYMVQ_ABI_VERSION 1

#if defined(_WIN32)
#define ASYMVQ_API __declspec(dllexport)
#else
#define ASYMVQ_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef enum asymvq_status {
  ASYMVQ_OK = 0,
  ASYMVQ_ERR_INVALID_ARGUMENT = 1, /* NULL pointer, wrong shape, NaN/Inf, value out of range */
  ASYMVQ_ERR_NOT_FOUND = 2,        /* a file or directory that does not exist */
  ASYMVQ_ERR_MANIFEST = 3,         /* engines directory refused: manifest, sha256, I/O names, dtypes, ranges */
  ASYMVQ_ERR_UNSUPPORTED = 4,      /* component not in the directory, scheduler option not implemented */
  ASYMVQ_ERR_RUNTIME = 5,          /* an engine failed while loading or running */
  ASYMVQ_ERR_FORMAT = 6,           /* a malformed input file (safetensors), used by asymvq-run */
  ASYMVQ_ERR_IO = 7                /* a file that exists but cannot be read or written */
} asymvq_status;

typedef enum asymvq_dtype { ASYMVQ_FLOAT32 = 0, ASYMVQ_INT64 = 1 } asymvq_dtype;

typedef enum asymvq_scheduler { ASYMVQ_SCHEDULER_DDIM = 0, ASYMVQ_SCHEDULER_EULER = 1 } asymvq_scheduler;

/* A caller-owned input tensor: contiguous row-major data of `dtype`, `ndim` sizes in `shape`. */
typedef struct asymvq_tensor {
  const void* data;
  const int64_t* shape;
  int32_t ndim;
  asymvq_dtype dtype;
} asymvq_tensor;

/* A library-allocated float32 output; release with asymvq_output_free (safe on a zeroed one). */
#define ASYMVQ_MAX_DIMS 8
typedef struct asymvq_output {
  float* data;
  int64_t shape[ASYMVQ_MAX_DIMS];
  int32_t ndim;
  int64_t numel;
} asymvq_output;

/* Seconds spent in each part of the last asymvq_inpaint call (filled when params.stats != NULL). */
typedef struct asymvq_inpaint_stats {
  double text_encode_s; /* text encoder (token ids given, or the empty negative prompt) */
  double vae_encode_s;  /* VAE encoder of the masked image and posterior sample */
  double loop_s;        /* the whole denoising loop: UNet, guidance and scheduler steps */
  double unet_s;        /* UNet calls alone, summed over the steps */
  double decode_s;      /* the asymmetric decoder */
  double total_s;
  int32_t steps;
} asymvq_inpaint_stats;

/* Arguments of asymvq_inpaint. Fill with asymvq_inpaint_params_init first (sets struct_size). */
typedef struct asymvq_inpaint_params {
  uint32_t struct_size;                  /* sizeof(asymvq_inpaint_params), checked */
  const asymvq_tensor* prompt_embeds;    /* (B, 77, D) float32, or NULL when prompt_ids is given */
  const asymvq_tensor* negative_embeds;  /* same shape, or NULL: the empty prompt through the text encoder */
  const asymvq_tensor* prompt_ids;       /* (B, 77) int64 CLIP token ids (needs a text-encoder engine), or NULL */
  const asymvq_tensor* negative_ids;     /* (B, 77) int64, or NULL */
  const asymvq_tensor* image;            /* (Bi, 3, H, W) in [-1, 1]; Bi = 1 or divides B. NULL for text-to-image */
  const asymvq_tensor* mask;             /* (Bi or 1, 1, H, W); NULL for text-to-image */
  int32_t height, width;                 /* text-to-image only: output size (0: the UNet's native size) */
  int32_t steps;                         /* >= 1 */
  double guidance_scale;                 /* classifier-free guidance when > 1 */
  uint64_t seed;                         /* as torch.Generator().manual_seed(seed) */
  asymvq_scheduler scheduler;
  asymvq_inpaint_stats* stats;           /* optional */
} asymvq_inpaint_params;

typedef struct asymvq_host asymvq_host; /* opaque */

ASYMVQ_API const char* asymvq_version(void);  /* "0.1.0" */
ASYMVQ_API const char* asymvq_last_error(void); /* "" when the thread's last call succeeded */
ASYMVQ_API const char* asymvq_status_name(asymvq_status status);

/* Verify DIR/manifest.json and every artifact's sha256, then load each component's AOTInductor
 * package. device: "cpu" (NULL means "cpu") or "cuda" / "cuda:N" for CUDA packages. */
ASYMVQ_API asymvq_status asymvq_open(const char* engines_dir, const char* device, asymvq_host** out);
ASYMVQ_API void asymvq_close(asymvq_host* host); /* NULL is fine */

/* *present = 1 when the directory has `component` (decoder, decoder-plain, unet, vae-encoder, text-encoder). */
ASYMVQ_API asymvq_status asymvq_has_component(const asymvq_host* host, const char* component, int* present);
/* The UNet's input channels: 9 (inpainting) or 4 (text-to-image); 0 without a UNet. */
ASYMVQ_API asymvq_status asymvq_unet_channels(const asymvq_host* host, int* channels);

/* Latents -> image. With image and mask: the asymmetric decoder ("decoder"); with both NULL:
 * the plain decoder ("decoder-plain"). */
ASYMVQ_API asymvq_status asymvq_decode(asymvq_host* host, const asymvq_tensor* latents, const asymvq_tensor* image,
                                       const asymvq_tensor* mask, asymvq_output* out);

/* CLIP token ids (B, 77) int64 -> last_hidden_state (B, 77, D). */
ASYMVQ_API asymvq_status asymvq_encode_text(asymvq_host* host, const asymvq_tensor* input_ids, asymvq_output* out);

ASYMVQ_API void asymvq_inpaint_params_init(asymvq_inpaint_params* params);
/* The whole job: embeddings, VAE encode of the masked image, the UNet loop with guidance and
 * the scheduler, then the asymmetric decoder fed with image and mask. */
ASYMVQ_API asymvq_status asymvq_inpaint(asymvq_host* host, const asymvq_inpaint_params* params, asymvq_output* out);

ASYMVQ_API void asymvq_output_free(asymvq_output* out);

#ifdef __cplusplus
}
#endif
#endif /* ASYMVQ_ASYMVQ_H */
