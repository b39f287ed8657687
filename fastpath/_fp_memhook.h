/*
 * fastpath memory accounting: allocator hooks on the PYMEM_DOMAIN_MEM and
 * PYMEM_DOMAIN_OBJ domains (every Python object, list/dict storage, str,
 * bytes...), counting what the calling thread allocates while a
 * memory-limited budget is armed on it, with a hard cap.
 *
 * - Idle path (no memory-limited budget armed on this thread): one
 *   thread-local load, one test, and a call to the original allocator.
 * - Active path: the allocation is counted (gross), its size is put in a
 *   per-thread open-addressing table keyed by pointer, so that a free during
 *   the call can subtract it (net) and the high-water mark can be kept (peak).
 *   Frees of blocks allocated before the call are not in the table: they
 *   change nothing.  The table is never cleared: entries carry the generation
 *   of the accounting session that wrote them and older ones read as empty.
 * - Cap: past the cap the allocation is refused (NULL, so the callee gets a
 *   MemoryError); after that, allocations are let through up to a grace
 *   margin so the error path itself can allocate, then refused again.
 * - Not hooked: PYMEM_DOMAIN_RAW (may be called without the GIL; pymalloc
 *   forwards large blocks there, which we have already counted one level up)
 *   and plain malloc (numpy array data, most C libraries).
 *
 * Only the MEM and OBJ domains are hooked, and both are only ever called with
 * the GIL held, so the per-thread state needs no atomics.
 */
#ifndef FASTPATH_MEMHOOK_H
#define FASTPATH_MEMHOOK_H

#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FP_MEM_TABLE_MIN 1024u            /* entries; 16 KiB */
#define FP_MEM_TABLE_MAX (1u << 20)       /* entries; 16 MiB: past it, net is an upper bound */
#define FP_MEM_GEN_BITS 16
#define FP_MEM_SIZE_MASK ((1ULL << (64 - FP_MEM_GEN_BITS)) - 1)
#define FP_MEM_GRACE_MIN (64 * 1024)

typedef struct {
    uintptr_t ptr;        /* block address; 0 = never used */
    uint64_t meta;        /* size (low 48 bits) | session generation (high 16 bits) */
} fp_mem_entry;

/* One thread's accounting session (the innermost memory-limited budget). */
typedef struct {
    int active;               /* count allocations of this thread */
    int enforce_cap;          /* refuse allocations past the cap (fail closed) */
    int64_t gross;            /* bytes allocated (freed or not) */
    int64_t net;              /* bytes allocated and not freed, during the session */
    int64_t peak;             /* highest net */
    int64_t cap;              /* net may not exceed this; INT64_MAX: no cap */
    int64_t refused;          /* net + size of the first refused allocation; 0: none */
    uint64_t cap_gen;         /* budget generation whose limit the cap is */
    uint64_t owner_gen;       /* budget generation this session counts for */
} fp_mem_session;

typedef struct {
    fp_mem_session s;         /* the session in force */
    uint64_t trip_gen;        /* generation whose cap refused an allocation (sticky) */
    int tripped;              /* the cap refused once: grace margin in force */
    int overflow;             /* the table hit FP_MEM_TABLE_MAX: net is an upper bound */
    fp_mem_entry *table;
    uint32_t mask;            /* capacity - 1 */
    uint32_t count;           /* entries of the current generation */
    uint32_t gen;             /* current session generation (1 .. 2**16-1) */
} fp_mem;

static __thread fp_mem *fp_tls_mem __attribute__((tls_model("initial-exec"))) = NULL;

static int fp_mem_installed = 0;

/* ---------------------------------------------------------------- the table */

static inline uint32_t fp_mem_hash(uintptr_t p, uint32_t mask)
{
    return (uint32_t)(((uint64_t)(p >> 4) * 0x9E3779B97F4A7C15ULL) >> 32) & mask;
}

static inline int fp_mem_live(const fp_mem *m, const fp_mem_entry *e)
{
    return e->ptr != 0 && (uint32_t)(e->meta >> (64 - FP_MEM_GEN_BITS)) == m->gen;
}

static int fp_mem_grow(fp_mem *m)
{
    uint32_t old_cap = m->mask + 1, new_cap, i;
    fp_mem_entry *old = m->table, *fresh;
    new_cap = old ? old_cap * 2 : FP_MEM_TABLE_MIN;
    if (new_cap > FP_MEM_TABLE_MAX)
        return -1;
    fresh = (fp_mem_entry *)calloc(new_cap, sizeof(fp_mem_entry));   /* libc: not hooked */
    if (fresh == NULL)
        return -1;
    m->table = fresh;
    m->mask = new_cap - 1;
    m->count = 0;
    if (old) {
        for (i = 0; i < old_cap; i++) {
            if (fp_mem_live(m, &old[i])) {
                uint32_t j = fp_mem_hash(old[i].ptr, m->mask);
                while (fresh[j].ptr)
                    j = (j + 1) & m->mask;
                fresh[j] = old[i];
                m->count++;
            }
        }
        free(old);
    }
    return 0;
}

static inline void fp_mem_insert(fp_mem *m, uintptr_t p, uint64_t size)
{
    uint32_t i;
    if (FP_UNLIKELY(m->overflow))
        return;
    if (FP_UNLIKELY(m->table == NULL || (m->count + 1) * 2 > m->mask + 1)) {
        if (fp_mem_grow(m) != 0) {
            m->overflow = 1;
            return;
        }
    }
    i = fp_mem_hash(p, m->mask);
    while (fp_mem_live(m, &m->table[i])) {
        if (m->table[i].ptr == p)
            break;          /* an address reused: overwrite */
        i = (i + 1) & m->mask;
    }
    if (!fp_mem_live(m, &m->table[i]))
        m->count++;
    m->table[i].ptr = p;
    m->table[i].meta = (size & FP_MEM_SIZE_MASK) | ((uint64_t)m->gen << (64 - FP_MEM_GEN_BITS));
}

/* Remove p; returns its size, or -1 when it was not allocated in this generation. */
static inline int64_t fp_mem_remove(fp_mem *m, uintptr_t p)
{
    uint32_t i, j, home;
    int64_t size;
    if (m->table == NULL)
        return -1;
    i = fp_mem_hash(p, m->mask);
    while (fp_mem_live(m, &m->table[i])) {
        if (m->table[i].ptr == p)
            goto found;
        i = (i + 1) & m->mask;
    }
    return -1;
found:
    size = (int64_t)(m->table[i].meta & FP_MEM_SIZE_MASK);
    m->count--;
    /* Backward-shift deletion keeps every probe chain unbroken. */
    j = i;
    for (;;) {
        j = (j + 1) & m->mask;
        if (!fp_mem_live(m, &m->table[j]))
            break;
        home = fp_mem_hash(m->table[j].ptr, m->mask);
        if (((j - home) & m->mask) >= ((j - i) & m->mask)) {
            m->table[i] = m->table[j];
            i = j;
        }
    }
    m->table[i].ptr = 0;
    m->table[i].meta = 0;
    return size;
}

/* A new accounting session: older entries become empty at once. */
static void fp_mem_new_generation(fp_mem *m)
{
    m->gen = (m->gen + 1) & ((1u << FP_MEM_GEN_BITS) - 1);
    if (m->gen == 0) {
        /* wrapped: old entries could alias the new generation */
        if (m->table)
            memset(m->table, 0, (size_t)(m->mask + 1) * sizeof(fp_mem_entry));
        m->gen = 1;
    }
    m->count = 0;
    m->overflow = 0;
}

/* ---------------------------------------------------------------- accounting */

/* May an allocation of `size` more bytes go ahead?  0: refuse it. */
static inline int fp_mem_admit(fp_mem *m, int64_t size)
{
    fp_mem_session *s = &m->s;
    int64_t limit;
    if (!s->enforce_cap)
        return 1;
    limit = s->cap;
    if (m->tripped) {
        /* the error path may allocate; a callee that swallows the
         * MemoryError and keeps allocating is refused again */
        int64_t grace = limit / 8 > FP_MEM_GRACE_MIN ? limit / 8 : FP_MEM_GRACE_MIN;
        limit = limit > INT64_MAX - grace ? INT64_MAX : limit + grace;
    }
    if (s->net + size <= limit)
        return 1;
    if (!m->tripped) {
        m->tripped = 1;
        m->trip_gen = s->cap_gen;
        s->refused = s->net + size;
    }
    return 0;
}

static inline void fp_mem_added(fp_mem *m, void *p, int64_t size)
{
    fp_mem_session *s = &m->s;
    s->gross += size;
    s->net += size;
    if (s->net > s->peak)
        s->peak = s->net;
    fp_mem_insert(m, (uintptr_t)p, (uint64_t)size);
}

static void *fp_mem_malloc(void *ctx, size_t size)
{
    PyMemAllocatorEx *orig = (PyMemAllocatorEx *)ctx;
    fp_mem *m = fp_tls_mem;
    void *p;
    if (FP_LIKELY(m == NULL || !m->s.active))
        return orig->malloc(orig->ctx, size);
    if (!fp_mem_admit(m, (int64_t)size))
        return NULL;
    p = orig->malloc(orig->ctx, size);
    if (p != NULL)
        fp_mem_added(m, p, (int64_t)size);
    return p;
}

static void *fp_mem_calloc(void *ctx, size_t nelem, size_t elsize)
{
    PyMemAllocatorEx *orig = (PyMemAllocatorEx *)ctx;
    fp_mem *m = fp_tls_mem;
    void *p;
    int64_t size;
    if (FP_LIKELY(m == NULL || !m->s.active))
        return orig->calloc(orig->ctx, nelem, elsize);
    if (elsize != 0 && nelem > (size_t)INT64_MAX / elsize)
        size = INT64_MAX;
    else
        size = (int64_t)(nelem * elsize);
    if (!fp_mem_admit(m, size))
        return NULL;
    p = orig->calloc(orig->ctx, nelem, elsize);
    if (p != NULL)
        fp_mem_added(m, p, size);
    return p;
}

/* A block that was not allocated during the session has an unknown old size:
 * its whole new size is counted (documented as an over-count). */
static void *fp_mem_realloc(void *ctx, void *ptr, size_t new_size)
{
    PyMemAllocatorEx *orig = (PyMemAllocatorEx *)ctx;
    fp_mem *m = fp_tls_mem;
    void *p;
    int64_t old = -1, grow;
    if (FP_LIKELY(m == NULL || !m->s.active))
        return orig->realloc(orig->ctx, ptr, new_size);
    if (ptr != NULL)
        old = fp_mem_remove(m, (uintptr_t)ptr);
    grow = (int64_t)new_size - (old > 0 ? old : 0);
    if (grow > 0 && !fp_mem_admit(m, grow)) {
        if (old >= 0)
            fp_mem_insert(m, (uintptr_t)ptr, (uint64_t)old);   /* unchanged */
        return NULL;
    }
    p = orig->realloc(orig->ctx, ptr, new_size);
    if (p == NULL) {
        if (old >= 0)
            fp_mem_insert(m, (uintptr_t)ptr, (uint64_t)old);
        return NULL;
    }
    if (grow > 0)
        m->s.gross += grow;
    m->s.net += grow;
    if (m->s.net > m->s.peak)
        m->s.peak = m->s.net;
    fp_mem_insert(m, (uintptr_t)p, (uint64_t)new_size);
    return p;
}

static void fp_mem_free(void *ctx, void *ptr)
{
    PyMemAllocatorEx *orig = (PyMemAllocatorEx *)ctx;
    fp_mem *m = fp_tls_mem;
    if (FP_UNLIKELY(m != NULL && m->s.active && ptr != NULL)) {
        int64_t size = fp_mem_remove(m, (uintptr_t)ptr);
        if (size >= 0)
            m->s.net -= size;
    }
    orig->free(orig->ctx, ptr);
}

/* Wrap the current allocator of a domain.  Each install gets its own saved
 * copy of what it wraps (never freed): an allocator stacked above an older
 * install of ours keeps pointing at that older copy, which stays valid. */
static int fp_mem_wrap(PyMemAllocatorDomain domain)
{
    PyMemAllocatorEx hook;
    PyMemAllocatorEx *orig = (PyMemAllocatorEx *)PyMem_RawCalloc(1, sizeof(PyMemAllocatorEx));
    if (orig == NULL)
        return -1;
    PyMem_GetAllocator(domain, orig);
    hook.ctx = orig;
    hook.malloc = fp_mem_malloc;
    hook.calloc = fp_mem_calloc;
    hook.realloc = fp_mem_realloc;
    hook.free = fp_mem_free;
    PyMem_SetAllocator(domain, &hook);
    return 0;
}

/* The allocator on top of each domain when we last knew our hook to be in
 * the chain (at the top, or under someone who wraps it, like tracemalloc). */
static PyMemAllocatorEx fp_mem_known_top[3];

/* Does an allocation through this domain reach our hook?  A 1-byte probe,
 * counted by a throwaway session (with the GIL held). */
static int fp_mem_reaches_hook(PyMemAllocatorDomain domain)
{
    fp_mem *m = fp_tls_mem;
    fp_mem_session saved;
    int64_t seen;
    void *p;
    if (m == NULL)
        return 1;
    saved = m->s;
    memset(&m->s, 0, sizeof(m->s));
    m->s.active = 1;
    m->s.cap = INT64_MAX;
    p = (domain == PYMEM_DOMAIN_OBJ) ? PyObject_Malloc(1) : PyMem_Malloc(1);
    seen = m->s.gross;
    if (p != NULL) {
        if (domain == PYMEM_DOMAIN_OBJ)
            PyObject_Free(p);
        else
            PyMem_Free(p);
    }
    m->s = saved;
    return seen > 0;
}

static void fp_mem_ensure_domain(PyMemAllocatorDomain domain)
{
    PyMemAllocatorEx cur;
    PyMem_GetAllocator(domain, &cur);
    if (cur.malloc == fp_mem_known_top[domain].malloc && cur.ctx == fp_mem_known_top[domain].ctx)
        return;             /* nothing changed since we last looked: the usual case */
    if (cur.malloc != fp_mem_malloc && !fp_mem_reaches_hook(domain)) {
        /* Someone restored allocators from before our install (for example
         * tracemalloc.stop() after a start() that predates us): wrap again. */
        if (fp_mem_wrap(domain) != 0)
            return;
        PyMem_GetAllocator(domain, &cur);
    }
    fp_mem_known_top[domain] = cur;
}

/* Install the hooks (at import, with the GIL held).  Never uninstalled. */
static void fp_mem_install(void)
{
    if (fp_mem_installed)
        return;
    if (fp_mem_wrap(PYMEM_DOMAIN_OBJ) == 0 && fp_mem_wrap(PYMEM_DOMAIN_MEM) == 0) {
        PyMem_GetAllocator(PYMEM_DOMAIN_OBJ, &fp_mem_known_top[PYMEM_DOMAIN_OBJ]);
        PyMem_GetAllocator(PYMEM_DOMAIN_MEM, &fp_mem_known_top[PYMEM_DOMAIN_MEM]);
        fp_mem_installed = 1;
    }
}

/* Before each memory-limited call: is the hook still in both chains? */
static inline void fp_mem_ensure(void)
{
    fp_mem_ensure_domain(PYMEM_DOMAIN_OBJ);
    fp_mem_ensure_domain(PYMEM_DOMAIN_MEM);
}

/* ---------------------------------------------------------- arm / disarm */

/* Start a session for budget generation `gen` (memory limit `limit` bytes,
 * `charged` already charged to it).  `saved` receives the enclosing session,
 * which keeps counting through the inner one: its cap still applies. */
static inline void fp_mem_arm(fp_mem *m, fp_mem_session *saved, uint64_t gen, int64_t limit,
                              int64_t charged, int enforce_cap)
{
    fp_mem_session *s = &m->s;
    int64_t cap = limit - charged;
    uint64_t cap_gen = gen;
    *saved = *s;
    if (saved->active) {
        if (saved->enforce_cap && saved->cap - saved->net < cap) {
            cap = saved->cap - saved->net;     /* the enclosing limit binds first */
            cap_gen = saved->cap_gen;
        }
        enforce_cap = enforce_cap || saved->enforce_cap;
    } else {
        fp_mem_new_generation(m);
        m->tripped = 0;
        m->trip_gen = 0;
    }
    s->active = 1;
    s->owner_gen = gen;
    s->enforce_cap = enforce_cap;
    s->gross = s->net = s->peak = 0;
    s->cap = cap;
    s->cap_gen = cap_gen;
    s->refused = 0;
}

/* End the session; `out` receives its figures.  The enclosing session, if
 * any, absorbs them (what the inner call allocated, the outer call did). */
static inline void fp_mem_disarm(fp_mem *m, const fp_mem_session *saved, fp_mem_session *out)
{
    fp_mem_session *s = &m->s;
    *out = *s;
    if (saved->active) {
        fp_mem_session outer = *saved;
        if (outer.net + s->peak > outer.peak)
            outer.peak = outer.net + s->peak;
        outer.gross += s->gross;
        outer.net += s->net;
        if (s->refused && !outer.refused)
            outer.refused = outer.net - s->net + s->refused;
        *s = outer;
    } else {
        *s = *saved;
        s->active = 0;
    }
}

/* Calls returned out of order on this thread (greenlets): end whatever
 * session is open, without handing its figures to anyone. */
static inline void fp_mem_abandon(fp_mem *m)
{
    memset(&m->s, 0, sizeof(m->s));
    m->tripped = 0;
    m->trip_gen = 0;
}

static inline void fp_mem_abandon_into(fp_mem *m, fp_mem_session *out)
{
    *out = m->s;
    fp_mem_abandon(m);
}

/* Adjust the cap of the running session after charge_memory(). */
static inline void fp_mem_charge(fp_mem *m, uint64_t gen, int64_t nbytes)
{
    if (m != NULL && m->s.active && m->s.cap_gen == gen)
        m->s.cap = m->s.cap > INT64_MIN + nbytes ? m->s.cap - nbytes : INT64_MIN;
}

#endif /* FASTPATH_MEMHOOK_H */
