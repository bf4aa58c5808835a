/* Counts the device memory a process holds, by interposing bmlib's allocation calls (LD_PRELOAD).

   The BM1684X simulator reports no memory figures (bm_get_stat and the heap queries give
   zeros), so the tests measure what bmrt and sail allocate by wrapping every public
   allocate / free entry point of libbmlib that they import. Blocks are kept by device
   address, so an entry point that calls another through the PLT counts a block once.
   Also counts the device handles open (bm_dev_request / bm_dev_free).
   Read through ctypes: shim_live_bytes(), shim_peak_bytes(), shim_live_blocks(),
   shim_open_handles(), shim_reset_peak(). Test support only. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>

typedef struct bm_context *bm_handle_t;
typedef int bm_status_t;
typedef struct { unsigned long addr; unsigned int reserved; int fd; unsigned int flags; unsigned int size; } mem32_t;
typedef struct { unsigned long addr; unsigned int reserved; int fd; unsigned int flags; unsigned long long size; } mem64_t;

#define SLOTS 65536 /* open addressing; a model holds a few hundred blocks */
static unsigned long slot_addr[SLOTS];
static unsigned long long slot_size[SLOTS];
static unsigned long long live, peak, blocks;
static long handles;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

/* The next definition: RTLD_NEXT sees libraries in the global scope only, and a Python extension
   module (sail) loads libbmlib in a local one, so then ask the loaded libbmlib itself. */
static void *real(const char *name) {
    void *f = dlsym(RTLD_NEXT, name);
    if (!f) {
        void *bmlib = dlopen("libbmlib.so.0", RTLD_LAZY | RTLD_NOLOAD);
        if (bmlib) f = dlsym(bmlib, name);
    }
    if (!f) abort();
    return f;
}

static void remember(unsigned long addr, unsigned long long size) {
    addr += 1; /* 0 marks a free slot, and device address 0 may be real */
    pthread_mutex_lock(&lock);
    unsigned long k = (addr >> 6) % SLOTS;
    for (unsigned long n = 0; n < SLOTS; n++, k = (k + 1) % SLOTS) {
        if (slot_addr[k] == addr) break; /* already counted by an outer entry point */
        if (slot_addr[k] == 0) {
            slot_addr[k] = addr, slot_size[k] = size;
            live += size, blocks++;
            if (live > peak) peak = live;
            break;
        }
    }
    pthread_mutex_unlock(&lock);
}

static void forget(unsigned long addr) {
    addr += 1;
    pthread_mutex_lock(&lock);
    unsigned long k = (addr >> 6) % SLOTS;
    for (unsigned long n = 0; n < SLOTS && slot_addr[k] != 0; n++, k = (k + 1) % SLOTS) {
        if (slot_addr[k] == addr) {
            live -= slot_size[k], blocks--;
            /* re-insert the rest of the cluster so that lookups past this slot still work */
            slot_addr[k] = 0;
            for (unsigned long j = (k + 1) % SLOTS; slot_addr[j] != 0; j = (j + 1) % SLOTS) {
                unsigned long a = slot_addr[j]; unsigned long long s = slot_size[j];
                slot_addr[j] = 0;
                unsigned long i = (a >> 6) % SLOTS;
                while (slot_addr[i] != 0) i = (i + 1) % SLOTS;
                slot_addr[i] = a, slot_size[i] = s;
            }
            break;
        }
    }
    pthread_mutex_unlock(&lock);
}

#define ALLOC32(name, params, args)                                                  \
    bm_status_t name params {                                                        \
        static bm_status_t (*f) params;                                              \
        if (!f) f = real(#name);                                                     \
        bm_status_t r = f args;                                                      \
        if (r == 0 && pmem) remember(pmem->addr, pmem->size);                        \
        return r;                                                                    \
    }
#define ALLOC64(name, params, args) ALLOC32(name, params, args)

ALLOC32(bm_malloc_device_byte, (bm_handle_t h, mem32_t *pmem, unsigned int size), (h, pmem, size))
ALLOC32(bm_malloc_device_byte_heap, (bm_handle_t h, mem32_t *pmem, int heap, unsigned int size), (h, pmem, heap, size))
ALLOC32(bm_malloc_device_byte_heap_mask, (bm_handle_t h, mem32_t *pmem, int mask, unsigned int size), (h, pmem, mask, size))
ALLOC32(bm_malloc_device_dword, (bm_handle_t h, mem32_t *pmem, int count), (h, pmem, count))
ALLOC32(bm_malloc_neuron_device, (bm_handle_t h, mem32_t *pmem, int n, int c, int hh, int w), (h, pmem, n, c, hh, w))
ALLOC64(bm_malloc_device_byte_u64, (bm_handle_t h, mem64_t *pmem, unsigned long long size), (h, pmem, size))
ALLOC64(bm_malloc_device_byte_heap_u64, (bm_handle_t h, mem64_t *pmem, int heap, unsigned long long size), (h, pmem, heap, size))
ALLOC64(bm_malloc_device_byte_heap_mask_u64, (bm_handle_t h, mem64_t *pmem, int mask, unsigned long long size),
        (h, pmem, mask, size))
ALLOC64(bm_malloc_neuron_device_u64,
        (bm_handle_t h, mem64_t *pmem, unsigned long long n, unsigned long long c, unsigned long long hh,
         unsigned long long w),
        (h, pmem, n, c, hh, w))

void bm_free_device(bm_handle_t h, mem32_t mem) {
    static void (*f)(bm_handle_t, mem32_t);
    if (!f) f = real("bm_free_device");
    forget(mem.addr);
    f(h, mem);
}

void bm_free_device_u64(bm_handle_t h, mem64_t mem) {
    static void (*f)(bm_handle_t, mem64_t);
    if (!f) f = real("bm_free_device_u64");
    forget(mem.addr);
    f(h, mem);
}

void bm_free_device_mem(bm_handle_t h, unsigned long long addr) {
    static void (*f)(bm_handle_t, unsigned long long);
    if (!f) f = real("bm_free_device_mem");
    forget((unsigned long)addr);
    f(h, addr);
}

bm_status_t bm_dev_request(bm_handle_t *handle, int devid) {
    static bm_status_t (*f)(bm_handle_t *, int);
    if (!f) f = real("bm_dev_request");
    bm_status_t r = f(handle, devid);
    if (r == 0) __sync_fetch_and_add(&handles, 1);
    return r;
}

void bm_dev_free(bm_handle_t handle) {
    static void (*f)(bm_handle_t);
    if (!f) f = real("bm_dev_free");
    __sync_fetch_and_sub(&handles, 1);
    f(handle);
}

unsigned long long shim_live_bytes(void) { return live; }
unsigned long long shim_peak_bytes(void) { return peak; }
unsigned long long shim_live_blocks(void) { return blocks; }
long shim_open_handles(void) { return handles; }
void shim_reset_peak(void) { pthread_mutex_lock(&lock); peak = live; pthread_mutex_unlock(&lock); }
