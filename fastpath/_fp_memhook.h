/*
 * fastpath memory accounting: allocator hooks on the PYMEM_DOMAIN_MEM and
 * PYMEM_DOMAIN_OBJ domains (every Python object, list/dict storage, str,
 * bytes...), counting what a thread allocates while a memory-limited budget
 * is armed on it, with a hard cap.
 *
 * Model
 * -----
 * - A budget's *record* (fp_mem_owner, created at its first memory-limited
 *   call, released when the budget is deallocated) holds its figures: live
 *   bytes of its blocks, their high-water mark (peak), gross bytes, and the
 *   largest refused request.
 * - A block allocated while a call runs is entered in one process-wide
 *   open-addressing table, pointer -> (size, node).  The node is the call's
 *   record for a top-level call, or, for a call nested inside another
 *   memory-limited call on the same thread, a node linking the inner record
 *   to the enclosing call's node.  The block counts for every record of that
 *   chain (each record once).
 * - The block stays in the table after the call returns: whenever and on
 *   whichever thread it is freed, its size is taken off the live figure of
 *   exactly the records it counted for, and of nothing else.  So frees
 *   between the calls of a budget, and frees by other threads, lower the
 *   figure, and an inner call is never credited with frees of blocks it did
 *   not allocate.
 * - An entry whose records are all gone (every budget of its chain was
 *   deallocated) is garbage: it is dropped when the block is freed, by table
 *   rebuilds, and by an incremental sweep (a few slots per table operation)
 *   that runs only after a budget died with blocks still in the table.  When
 *   the table is empty every free is again one load and a test.
 * - The table grows at 1/2 load and shrinks (its memory returned to libc)
 *   when it falls below 1/8, so no per-call cost depends on what an earlier
 *   call left; nothing is ever cleared per call.  At its maximum size
 *   (FP_MEM_TABLE_MAX slots) it fills up to 3/4; past that, further blocks are
 *   counted when allocated but not entered (fp_mt_untracked): their frees are
 *   not subtracted, so the figures of their records become upper bounds.
 *
 * The cap
 * -------
 * Past the cap an allocation is refused (NULL: the callee gets MemoryError).
 * After that first refusal allocations go through up to a grace margin
 * (1/8 of the limit, at least 64 KiB) so the error path can run.  After every
 * refusal the thread also gets an error-path reserve (FP_MEM_RESERVE bytes
 * that pass even past the grace margin), so that CPython can always allocate
 * the MemoryError object, its traceback and frame objects: a refused
 * normalisation of a MemoryError aborts the interpreter.  A refusal past the
 * grace margin (the callee swallowed the MemoryError and kept allocating)
 * also stops the call for real: an asynchronous ExecutionInterrupted on the
 * calling thread, which enforce() reports as MEMORY_EXCEEDED.  It is sent from
 * inside the allocator, with the GIL held, but only when the interpreter's
 * thread-list lock (HEAD_LOCK, taken by PyThreadState_SetAsyncExc) is free:
 * CPython allocates while holding that lock (sys._current_frames() and
 * sys._current_exceptions() build their dict under it; interpreter teardown
 * runs PyThreadState_Clear, hence arbitrary finalizers, under it), and taking
 * it again from the same thread would deadlock.  A kill that cannot be sent
 * at once is sent by the thread's next hooked allocation that can.
 *
 * Not hooked: PYMEM_DOMAIN_RAW (may be called without the GIL; pymalloc
 * forwards large blocks there, which we have already counted one level up)
 * and plain malloc (numpy array data, most C libraries).
 *
 * Locking: every access to the process-wide state (table, owners, sweep) is
 * made with the GIL held -- the MEM and OBJ domains are only ever called with
 * it (GIL builds of 3.11-3.14), and so are enforce(), charge_memory() and a
 * budget's deallocation -- and is wrapped in FP_MEM_LOCK/FP_MEM_UNLOCK, which
 * are no-ops under the GIL.  On a free-threaded build (Py_GIL_DISABLED) those
 * hooks run on several threads at once (a free by another thread subtracts from
 * the owner's figures), and the two are a mutex (fp_mutex, _fp_atomic.h):
 * nothing between them calls back into Python or into a hooked allocator.
 */
#ifndef FASTPATH_MEMHOOK_H
#define FASTPATH_MEMHOOK_H

#include "_fp_common.h"
#include "_fp_atomic.h"
#include "_fp_internal.h"
#include <pythread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* The interpreter's thread-list lock, to check it is free before
 * PyThreadState_SetAsyncExc (which takes it) from inside the allocator: read
 * through the interpreter's internal headers when they are installed. */
#define FP_MEM_HEAD_PROBE FP_HAVE_INTERNAL

static fp_mutex fp_mem_lock = FP_MUTEX_INIT;
#define FP_MEM_LOCK() fp_mutex_lock(&fp_mem_lock)   /* see "Locking" above */
#define FP_MEM_UNLOCK() fp_mutex_unlock(&fp_mem_lock)

#define FP_MEM_TABLE_MIN 512u           /* slots (8 KiB); kept once allocated */
#define FP_MEM_TABLE_MAX (1u << 22)     /* slots (64 MiB): 3,145,728 blocks at 3/4 load */
#define FP_MEM_GRACE_MIN (64 * 1024)
#define FP_MEM_RESERVE (16 * 1024)      /* error-path reserve granted after every refusal */
#define FP_MEM_SWEEP_STEP 2             /* slots swept per table operation during a pass */

/* A table entry: block address (0 = empty slot), size (40 bits) | node (24 bits). */
typedef struct {
    uintptr_t ptr;
    uint64_t meta;
} fp_mem_entry;

#define FP_MT_NODE_BITS 24
#define FP_MT_NODE_MAX ((1u << FP_MT_NODE_BITS) - 1)
#define FP_MT_SIZE_MAX ((1ULL << (64 - FP_MT_NODE_BITS)) - 1)
#define FP_MT_META(size, node) (((uint64_t)(size) << FP_MT_NODE_BITS) | (uint64_t)(node))
#define FP_MT_SIZE(meta) ((int64_t)((meta) >> FP_MT_NODE_BITS))
#define FP_MT_NODE(meta) ((uint32_t)((meta) & FP_MT_NODE_MAX))

/* ---------------------------------------------------------------- owners */

/* A budget's record, or a nested call's node.  Referenced by index (0 = none). */
typedef struct {
    /* -- a record (rec == its own index) -- */
    int64_t live;         /* bytes of the budget's blocks not freed yet */
    int64_t peak;         /* highest live */
    int64_t gross;        /* bytes allocated, freed or not */
    int64_t refused;      /* live + a refused request (the largest); 0: none */
    int64_t cap;          /* memory limit - charges: what live may not exceed */
    int64_t blocks;       /* table entries counted in live */
    /* -- any owner -- */
    uint32_t rec;         /* the record this node counts for (itself for a record) */
    uint32_t parent;      /* the enclosing call's node when this node was made; 0: none */
    uint32_t refs;        /* the budget (a record), child nodes, a running call */
    uint32_t entries;     /* table entries recorded under this very owner */
    uint32_t next_free;
    uint8_t counts;       /* its record is not already counted by an enclosing node */
    uint8_t dead;         /* a record whose budget is gone */
    uint8_t inexact;      /* a record with blocks the table could not keep (upper bound) */
} fp_mem_owner;

#define FP_MEM_CHUNK_BITS 10
static fp_mem_owner *fp_mem_chunks[1u << (FP_MT_NODE_BITS - FP_MEM_CHUNK_BITS)];
static uint32_t fp_mem_pool_next = 1;   /* next index never handed out */
static uint32_t fp_mem_pool_free = 0;   /* free list */
static uint32_t fp_mem_owners = 0;      /* owners in use */

static inline fp_mem_owner *fp_own(uint32_t i)
{
    return &fp_mem_chunks[i >> FP_MEM_CHUNK_BITS][i & ((1u << FP_MEM_CHUNK_BITS) - 1)];
}

/* A zeroed owner, or 0 when out of memory (or of indices). */
static uint32_t fp_mem_owner_new(void)
{
    uint32_t i = fp_mem_pool_free;
    fp_mem_owner *o;
    if (i) {
        o = fp_own(i);
        fp_mem_pool_free = o->next_free;
    } else {
        i = fp_mem_pool_next;
        if (i > FP_MT_NODE_MAX)
            return 0;
        if (fp_mem_chunks[i >> FP_MEM_CHUNK_BITS] == NULL) {
            fp_mem_owner *chunk = (fp_mem_owner *)calloc(1u << FP_MEM_CHUNK_BITS,
                                                         sizeof(fp_mem_owner));   /* libc: not hooked */
            if (chunk == NULL)
                return 0;
            fp_mem_chunks[i >> FP_MEM_CHUNK_BITS] = chunk;
        }
        fp_mem_pool_next++;
        o = fp_own(i);
    }
    memset(o, 0, sizeof(*o));
    fp_mem_owners++;
    return i;
}

/* An owner left without references or entries: back to the free list. */
static inline void fp_mem_pool_put(uint32_t i)
{
    fp_own(i)->next_free = fp_mem_pool_free;
    fp_mem_pool_free = i;
    fp_mem_owners--;
}

/* An owner is freed once it has neither references nor entries; a nested
 * node then drops the references it held (its record, its parent). */
static void fp_mem_owner_free(uint32_t i);

/* Drop one reference (the budget, a child node, a running call). */
static inline void fp_mem_owner_unref(uint32_t i)
{
    fp_mem_owner *o = fp_own(i);
    if (--o->refs == 0 && o->entries == 0)
        fp_mem_owner_free(i);
}

/* One table entry recorded under owner i is gone. */
static inline void fp_mem_entry_gone(uint32_t i)
{
    fp_mem_owner *o = fp_own(i);
    if (--o->entries == 0 && o->refs == 0)
        fp_mem_owner_free(i);
}

static void fp_mem_owner_free(uint32_t i)
{
    fp_mem_owner *o = fp_own(i);
    uint32_t parent = o->parent, rec = o->rec;
    fp_mem_pool_put(i);
    if (rec != i) {                 /* a nested node (a record has no parent) */
        fp_mem_owner_unref(rec);
        fp_mem_owner_unref(parent);
    }
}

/* Does the chain from node n count record rec? */
static inline int fp_mem_chain_counts(uint32_t n, uint32_t rec)
{
    while (n) {
        fp_mem_owner *o = fp_own(n);
        if (o->counts && o->rec == rec)
            return 1;
        n = o->parent;
    }
    return 0;
}

/* Are all the records the chain from node n counts for gone? */
static inline int fp_mem_chain_dead(uint32_t n)
{
    while (n) {
        fp_mem_owner *o = fp_own(n);
        if (o->counts && !fp_own(o->rec)->dead)
            return 0;
        n = o->parent;
    }
    return 1;
}

/* ----------------------------------------------------------------- table */

static fp_mem_entry *fp_mt_slots = NULL;
static uint32_t fp_mt_mask = 0;              /* capacity - 1 */
static uint32_t fp_mt_count = 0;             /* entries; 0: frees take the fast path */
static uint32_t fp_mt_max_slots = FP_MEM_TABLE_MAX;
static uint64_t fp_mt_untracked = 0;         /* blocks counted but never entered (table full) */
static int64_t fp_mt_dead_blocks = 0;        /* entries counted for a record that is gone */
/* The sweep: 0 idle; 1 waiting (fp_mt_sweep_wait more table operations: the
 * blocks of a budget that just died are usually freed right after it); 2 a
 * pass under way (fp_mt_sweep_left slots to go). */
static int fp_mt_sweep_on = 0;
static uint32_t fp_mt_sweep_wait = 0;
static int fp_mt_sweep_found = 0;            /* this pass dropped garbage */
static int fp_mt_sweep_death = 0;            /* a budget died with entries during this pass */
static uint32_t fp_mt_sweep_pos = 0;
static uint32_t fp_mt_sweep_left = 0;

static int fp_mem_installed = 0;

/* The home slot of p (Fibonacci hashing of the address in 16-byte units).
 * Tried and dropped: keeping neighbouring blocks in neighbouring slots (for
 * cache locality in very large calls) clusters linear probing 3-10x worse. */
static inline uint32_t fp_mt_hash(uintptr_t p, uint32_t mask)
{
    return (uint32_t)(((uint64_t)(p >> 4) * 0x9E3779B97F4A7C15ULL) >> 32) & mask;
}

/* The slot of p, or -1. */
static inline int64_t fp_mt_find(uintptr_t p)
{
    uint32_t i = fp_mt_hash(p, fp_mt_mask);
    for (;;) {
        uintptr_t q = fp_mt_slots[i].ptr;
        if (q == p)
            return i;
        if (q == 0)
            return -1;
        i = (i + 1) & fp_mt_mask;
    }
}

/* Empty slot i; backward-shift deletion keeps every probe chain unbroken. */
static inline void fp_mt_delete_at(uint32_t i)
{
    fp_mem_entry *t = fp_mt_slots;
    uint32_t j = i, home;
    for (;;) {
        j = (j + 1) & fp_mt_mask;
        if (t[j].ptr == 0)
            break;
        home = fp_mt_hash(t[j].ptr, fp_mt_mask);
        if (((j - home) & fp_mt_mask) >= ((j - i) & fp_mt_mask)) {
            t[i] = t[j];
            i = j;
        }
    }
    t[i].ptr = 0;
    t[i].meta = 0;
    fp_mt_count--;
}

/* A block of node n was allocated: count it for every record of the chain. */
static inline void fp_mem_chain_add(uint32_t n, int64_t size, int tracked)
{
    while (n) {
        fp_mem_owner *o = fp_own(n);
        if (o->counts) {
            fp_mem_owner *r = o->rec == n ? o : fp_own(o->rec);
            r->live += size;
            r->gross += size;
            if (r->live > r->peak)
                r->peak = r->live;
            if (tracked)
                r->blocks++;
            else
                r->inexact = 1;
        }
        n = o->parent;
    }
}

/* A tracked block of node n left the table (freed, or given up on when
 * `freed` is 0: then its size stays in the figures, which become upper bounds). */
static inline void fp_mem_chain_sub(uint32_t n, int64_t size, int freed)
{
    while (n) {
        fp_mem_owner *o = fp_own(n);
        if (o->counts) {
            fp_mem_owner *r = o->rec == n ? o : fp_own(o->rec);
            if (freed)
                r->live -= size;
            else
                r->inexact = 1;
            r->blocks--;
            if (r->dead)
                fp_mt_dead_blocks--;
        }
        n = o->parent;
    }
}

/* Table memory: small tables from libc, large ones mapped directly, so that
 * a shrink gives the memory back to the system at once (libc keeps freed
 * heap memory of each thread's arena) and the kernel may back them with huge
 * pages (a lookup is a random access: fewer TLB misses). */
#define FP_MT_MMAP_BYTES (256u * 1024)

static fp_mem_entry *fp_mt_alloc(uint32_t cap)
{
    size_t bytes = (size_t)cap * sizeof(fp_mem_entry);
    void *p;
    if (bytes < FP_MT_MMAP_BYTES)
        return (fp_mem_entry *)calloc(cap, sizeof(fp_mem_entry));      /* libc: not hooked */
    p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
#ifdef MADV_HUGEPAGE
    if (bytes >= (2u << 20))
        madvise(p, bytes, MADV_HUGEPAGE);
#endif
    return (fp_mem_entry *)p;
}

static void fp_mt_free(fp_mem_entry *t, uint32_t cap)
{
    size_t bytes = (size_t)cap * sizeof(fp_mem_entry);
    if (t == NULL)
        return;
    if (bytes < FP_MT_MMAP_BYTES)
        free(t);
    else
        munmap(t, bytes);
}

static void fp_mt_replace(fp_mem_entry *fresh, uint32_t new_cap)
{
    if (fp_mt_slots != NULL)
        fp_mt_free(fp_mt_slots, fp_mt_mask + 1);
    fp_mt_slots = fresh;
    fp_mt_mask = new_cap - 1;
    fp_mt_sweep_pos = 0;
}

/* Move the entries to a table of new_cap slots, dropping garbage. */
static int fp_mt_rebuild(uint32_t new_cap)
{
    fp_mem_entry *old = fp_mt_slots, *fresh;
    uint32_t old_cap = old ? fp_mt_mask + 1 : 0, mask = new_cap - 1, count = 0, i, j;
    fresh = fp_mt_alloc(new_cap);
    if (fresh == NULL)
        return -1;
    for (i = 0; i < old_cap; i++) {
        uintptr_t p = old[i].ptr;
        uint32_t node;
        if (p == 0)
            continue;
        node = FP_MT_NODE(old[i].meta);
        if (fp_mem_chain_dead(node)) {
            fp_mem_chain_sub(node, FP_MT_SIZE(old[i].meta), 1);
            fp_mem_entry_gone(node);
            continue;
        }
        j = fp_mt_hash(p, mask);
        while (fresh[j].ptr)
            j = (j + 1) & mask;
        fresh[j] = old[i];
        count++;
    }
    fp_mt_replace(fresh, new_cap);
    fp_mt_count = count;
    fp_mt_sweep_on = 0;         /* no garbage left */
    return 0;
}

/* The capacity for n entries after a shrink: at most 1/4 full. */
static inline uint32_t fp_mt_fit(uint32_t n)
{
    uint32_t cap = FP_MEM_TABLE_MIN;
    while (cap < FP_MEM_TABLE_MAX && (uint64_t)cap < (uint64_t)n * 4)
        cap *= 2;
    return cap;
}

/* Room for one more entry?  0: yes. */
static int fp_mt_make_room(void)
{
    uint32_t cap;
    if (fp_mt_slots == NULL) {
        fp_mem_entry *fresh = fp_mt_alloc(FP_MEM_TABLE_MIN);
        if (fresh == NULL)
            return -1;
        fp_mt_replace(fresh, FP_MEM_TABLE_MIN);
        return 0;
    }
    cap = fp_mt_mask + 1;
    if ((uint64_t)(fp_mt_count + 1) * 2 <= cap)
        return 0;
    if (cap < fp_mt_max_slots && fp_mt_rebuild(cap * 2) == 0)
        return 0;
    /* at the maximum size (or out of memory): fill up to 3/4 */
    if ((uint64_t)(fp_mt_count + 1) * 4 <= (uint64_t)cap * 3)
        return 0;
    return -1;
}

/* Enter block p of node n.  0: the table is full (the block is not tracked). */
static inline int fp_mt_insert(uintptr_t p, int64_t size, uint32_t n)
{
    uint32_t i;
    if (FP_UNLIKELY(fp_mt_slots == NULL || (fp_mt_count + 1) * 2 > fp_mt_mask + 1)) {
        if (fp_mt_make_room() != 0)
            return 0;
    }
    if (FP_UNLIKELY((uint64_t)size > FP_MT_SIZE_MAX))
        return 0;
    i = fp_mt_hash(p, fp_mt_mask);
    while (fp_mt_slots[i].ptr) {
        if (fp_mt_slots[i].ptr == p) {
            /* An address we still listed was freed behind our back (an allocator
             * installed under the hook for a while): it is free, then reused. */
            uint32_t stale = FP_MT_NODE(fp_mt_slots[i].meta);
            fp_mem_chain_sub(stale, FP_MT_SIZE(fp_mt_slots[i].meta), 1);
            fp_mt_slots[i].meta = FP_MT_META(size, n);
            fp_mem_entry_gone(stale);
            return 1;
        }
        i = (i + 1) & fp_mt_mask;
    }
    fp_mt_slots[i].ptr = p;
    fp_mt_slots[i].meta = FP_MT_META(size, n);
    fp_mt_count++;
    return 1;
}

/* After removals: give memory back when the table is mostly empty. */
static inline void fp_mt_maybe_shrink(void)
{
    uint32_t cap = fp_mt_mask + 1, target;
    if (FP_LIKELY(cap <= FP_MEM_TABLE_MIN || (uint64_t)fp_mt_count * 8 >= cap))
        return;
    if (fp_mt_count == 0) {
        fp_mem_entry *fresh = fp_mt_alloc(FP_MEM_TABLE_MIN);
        if (fresh != NULL) {
            fp_mt_replace(fresh, FP_MEM_TABLE_MIN);
            fp_mt_sweep_on = 0;
        }
        return;
    }
    target = fp_mt_fit(fp_mt_count);
    if (fp_mt_rebuild(target) == 0 && fp_mt_mask + 1 > fp_mt_fit(fp_mt_count))
        fp_mt_rebuild(fp_mt_fit(fp_mt_count));  /* it dropped garbage: smaller still */
    /* (out of memory: keep the larger table) */
}

/* Drop the entry in slot i: the block was freed. */
static inline void fp_mt_drop_at(uint32_t i)
{
    uint32_t n = FP_MT_NODE(fp_mt_slots[i].meta);
    fp_mem_chain_sub(n, FP_MT_SIZE(fp_mt_slots[i].meta), 1);
    fp_mt_delete_at(i);
    fp_mem_entry_gone(n);
}

static inline void fp_mt_sweep_wait_start(void)
{
    fp_mt_sweep_on = 1;
    fp_mt_sweep_wait = fp_mt_mask + 1;       /* as long as a pass: O(1) amortised */
}

/* A budget died with entries left: sweep for garbage, soon. */
static void fp_mt_sweep_start(void)
{
    if (fp_mt_sweep_on == 2)
        fp_mt_sweep_death = 1;
    else if (fp_mt_sweep_on == 0 && fp_mt_slots != NULL)
        fp_mt_sweep_wait_start();
}

/* One tick of the sweep, on every table operation while it is not idle.  A
 * pass visits every slot once, FP_MEM_SWEEP_STEP per tick, and drops the
 * entries all of whose records are gone; another pass follows at once while
 * the last one found garbage, or after a wait if a budget died meanwhile. */
static void fp_mt_sweep_tick(void)
{
    int k;
    if (fp_mt_sweep_on == 1) {
        if (--fp_mt_sweep_wait)
            return;
        if (fp_mt_dead_blocks <= 0 || fp_mt_count == 0) {
            fp_mt_sweep_on = 0;
            return;
        }
        fp_mt_sweep_on = 2;
        fp_mt_sweep_found = fp_mt_sweep_death = 0;
        fp_mt_sweep_left = fp_mt_mask + 1;
    }
    for (k = 0; k < FP_MEM_SWEEP_STEP && fp_mt_count; k++) {
        uint32_t i;
        if (fp_mt_sweep_left == 0) {
            if (fp_mt_sweep_found && fp_mt_dead_blocks > 0) {
                fp_mt_sweep_found = fp_mt_sweep_death = 0;
                fp_mt_sweep_left = fp_mt_mask + 1;
            } else if (fp_mt_sweep_death && fp_mt_dead_blocks > 0) {
                fp_mt_sweep_wait_start();
                return;
            } else {
                fp_mt_sweep_on = 0;
                return;
            }
        }
        i = fp_mt_sweep_pos & fp_mt_mask;
        if (fp_mt_slots[i].ptr && fp_mem_chain_dead(FP_MT_NODE(fp_mt_slots[i].meta))) {
            fp_mt_drop_at(i);           /* slot i now holds a shifted entry: look again */
            fp_mt_sweep_found = 1;
        } else {
            fp_mt_sweep_pos++;
            fp_mt_sweep_left--;
        }
    }
    if (fp_mt_count == 0)
        fp_mt_sweep_on = 0;
    fp_mt_maybe_shrink();
}

/* Forget every entry (the hook was out of the allocator chain for a while,
 * so some listed blocks may have been freed unseen).  The figures keep their
 * sizes: upper bounds from now on. */
static void fp_mt_forget_all(void)
{
    uint32_t i, cap;
    if (fp_mt_slots == NULL)
        return;
    cap = fp_mt_mask + 1;
    for (i = 0; i < cap; i++) {
        if (fp_mt_slots[i].ptr) {
            uint32_t n = FP_MT_NODE(fp_mt_slots[i].meta);
            fp_mem_chain_sub(n, FP_MT_SIZE(fp_mt_slots[i].meta), 0);
            fp_mem_entry_gone(n);
            fp_mt_slots[i].ptr = 0;
            fp_mt_slots[i].meta = 0;
        }
    }
    fp_mt_count = 0;
    fp_mt_sweep_on = 0;
    fp_mt_maybe_shrink();
}

/* --------------------------------------------------------- per thread */

/* One memory-limited call on this thread.  The enclosing call's session is
 * saved on enforce()'s C stack (fp_saved) and linked through `outer`, so
 * every enclosing cap is checked while an inner call runs. */
typedef struct fp_mem_session {
    int active;               /* a memory-limited call runs on this thread */
    int enforce_cap;          /* this call refuses allocations past its cap (fail closed) */
    int any_cap;              /* this call or an enclosing one does */
    int tripped;              /* this call's cap refused an allocation: grace margin in force */
    int killed;               /* a memory interrupt was sent to stop this call */
    int own_node;             /* node is a nested node made for this call */
    uint32_t rec;             /* the budget's record; 0: nothing is counted */
    uint32_t node;            /* where its blocks are entered; 0: nothing is counted */
    fp_mem_owner *recp;       /* the record itself (owners never move) */
    uint64_t owner_gen;       /* enforce() generation of this call */
    struct fp_mem_session *outer;   /* the enclosing call's session (saved copy), or NULL */
} fp_mem_session;

typedef struct {
    fp_mem_session s;         /* the innermost session */
    int64_t reserve;          /* error-path bytes allowed past every cap (refilled per refusal) */
    int kill_wanted;          /* a memory interrupt is due but was not sent yet */
    int64_t probe_seen;       /* allocations the hook saw with node 0 (reaches-hook probe) */
} fp_mem;

static __thread fp_mem *fp_tls_mem __attribute__((tls_model("initial-exec"))) = NULL;

/* ExecutionInterrupted; defined (and set at import) in _fp_runtime.h. */
static PyObject *fp_interrupt_type;

static inline void fp_mem_thread_reset(fp_mem *m)
{
    memset(m, 0, sizeof(*m));
}

/* Is the interpreter's thread-list lock free, so that
 * PyThreadState_SetAsyncExc cannot deadlock on it?  Only "held by this
 * thread" matters: a holder on another thread (creating or deleting a thread
 * state) lets go without needing anything from us. */
static int fp_mem_head_lock_free(void)
{
#if !FP_MEM_HEAD_PROBE
    return 0;               /* cannot tell: the call is refused, never interrupted */
#elif PY_VERSION_HEX >= 0x030D0000
    /* 3.13+: HEAD_LOCK is a PyMutex (bit 0: locked) */
    return (__atomic_load_n(&_PyRuntime.interpreters.mutex._bits, __ATOMIC_RELAXED) & 1) == 0;
#else
    PyThread_type_lock lock = _PyRuntime.interpreters.mutex;
    if (lock == NULL || !PyThread_acquire_lock(lock, NOWAIT_LOCK))
        return 0;
    PyThread_release_lock(lock);
    return 1;
#endif
}

/* Send the memory interrupt now if that is safe; otherwise it stays wanted
 * and the next hooked allocation or free of this thread tries again. */
static void fp_mem_send_kill(fp_mem *m)
{
    if (fp_interrupt_type == NULL || !PyGILState_Check() || !fp_mem_head_lock_free())
        return;
    m->kill_wanted = 0;
    PyThreadState_SetAsyncExc(PyThread_get_thread_ident(), fp_interrupt_type);
}

/* ---------------------------------------------------------------- the cap */

/* live + need <= limit, without overflow (live >= 0). */
static inline int fp_mem_fits(int64_t live, int64_t need, int64_t limit)
{
    return need <= 0 || (live <= limit && (uint64_t)need <= (uint64_t)limit - (uint64_t)live);
}

static inline int64_t fp_mem_limit(const fp_mem_session *s, const fp_mem_owner *r)
{
    int64_t grace;
    if (!s->tripped)
        return r->cap;
    grace = r->cap / 8 > FP_MEM_GRACE_MIN ? r->cap / 8 : FP_MEM_GRACE_MIN;
    return r->cap > INT64_MAX - grace ? INT64_MAX : r->cap + grace;
}

/* What an allocation of `size` adds to the record of s: a realloc of a block
 * the record already counts adds only the difference. */
static inline int64_t fp_mem_need(const fp_mem_session *s, int64_t size, uint32_t old_node,
                                  int64_t old_size)
{
    return size - (old_node && fp_mem_chain_counts(old_node, s->rec) ? old_size : 0);
}

static inline int fp_mem_session_fits(const fp_mem_session *s, int64_t size, uint32_t old_node,
                                      int64_t old_size)
{
    const fp_mem_owner *r = fp_own(s->rec);
    return fp_mem_fits(r->live, fp_mem_need(s, size, old_node, old_size), fp_mem_limit(s, r));
}

/* Refuse: trip the caps that are crossed, record what the calls tried to
 * use, grant the error-path reserve, and ask for the memory interrupt when a
 * cap was crossed past its grace margin. */
static void fp_mem_refuse(fp_mem *m, int64_t size, uint32_t old_node, int64_t old_size)
{
    fp_mem_session *s, *kill = NULL;
    int first = 0;
    for (s = &m->s; s; s = s->outer) {
        if (!s->enforce_cap || !s->rec || fp_mem_session_fits(s, size, old_node, old_size))
            continue;
        if (!s->tripped) {
            s->tripped = 1;
            first = 1;
        } else if (kill == NULL) {
            kill = s;               /* it swallowed the refusal and kept allocating */
        }
    }
    if (first) {
        for (s = &m->s; s; s = s->outer) {
            fp_mem_owner *r;
            int64_t need, tried;
            if (!s->rec)
                continue;
            r = fp_own(s->rec);
            need = fp_mem_need(s, size, old_node, old_size);
            tried = need > INT64_MAX - r->live ? INT64_MAX : r->live + need;
            if (tried > r->refused)
                r->refused = tried;
        }
    }
    m->reserve = FP_MEM_RESERVE;
    if (kill != NULL) {
        kill->killed = 1;
        m->kill_wanted = 1;
    }
}

/* May an allocation of `size` bytes go ahead (replacing a block of node
 * old_node and old_size bytes, for a realloc)?  0: refuse it. */
static int fp_mem_admit_slow(fp_mem *m, int64_t size, uint32_t old_node, int64_t old_size)
{
    fp_mem_session *s;
    int64_t grow = size - (old_node && old_node == m->s.node ? old_size : 0);
    for (s = &m->s; s; s = s->outer) {
        if (s->enforce_cap && s->rec && !fp_mem_session_fits(s, size, old_node, old_size))
            break;
    }
    if (s == NULL)
        return 1;
    if (grow <= m->reserve) {
        /* the error path (MemoryError, traceback, frames) may always allocate */
        m->reserve -= grow > 0 ? grow : 0;
        return 1;
    }
    fp_mem_refuse(m, size, old_node, old_size);
    return 0;
}

static inline int fp_mem_admit(fp_mem *m, int64_t size, uint32_t old_node, int64_t old_size)
{
    const fp_mem_session *s = &m->s;
    if (!s->any_cap)
        return 1;
    if (FP_LIKELY(s->outer == NULL && !s->tripped && (old_node == 0 || old_node == s->node))) {
        const fp_mem_owner *r = fp_own(s->rec);
        if (fp_mem_fits(r->live, size - (old_node ? old_size : 0), r->cap))
            return 1;
    }
    return fp_mem_admit_slow(m, size, old_node, old_size);
}

/* ------------------------------------------------------------- the hooks */

/* Block p of `size` bytes was allocated under node n. */
static inline void fp_mem_added(const fp_mem_session *s, void *p, int64_t size)
{
    uint32_t n = s->node;
    int tracked = fp_mt_insert((uintptr_t)p, size, n);
    fp_mem_owner *o = s->outer == NULL ? s->recp : fp_own(n);
    if (FP_LIKELY(s->outer == NULL)) {
        /* a top-level call: the node is the budget's record itself */
        o->live += size;
        o->gross += size;
        if (o->live > o->peak)
            o->peak = o->live;
        if (tracked) {
            o->blocks++;
            o->entries++;
        } else {
            o->inexact = 1;
            fp_mt_untracked++;
        }
    } else {
        fp_mem_chain_add(n, size, tracked);
        if (tracked)
            o->entries++;
        else
            fp_mt_untracked++;
    }
    if (FP_UNLIKELY(fp_mt_sweep_on))
        fp_mt_sweep_tick();
}

/* A possibly tracked block p was freed (or left the accounting: a realloc
 * outside any call).  Any thread, with the GIL held.  (A memory interrupt that
 * could not be sent yet is retried by the thread's next allocation.) */
static __attribute__((noinline)) void fp_mem_forget(uintptr_t p)
{
    FP_MEM_LOCK();
    if (fp_mt_count) {
        int64_t i = fp_mt_find(p);
        if (i >= 0) {
            uint64_t meta = fp_mt_slots[i].meta;
            uint32_t n = FP_MT_NODE(meta);
            fp_mem_owner *o = fp_own(n);
            if (FP_LIKELY(o->parent == 0)) {
                /* a block of a top-level call: its record alone counted it */
                o->live -= FP_MT_SIZE(meta);
                o->blocks--;
                if (FP_UNLIKELY(o->dead))
                    fp_mt_dead_blocks--;
                fp_mt_delete_at((uint32_t)i);
                if (FP_UNLIKELY(--o->entries == 0 && o->refs == 0))
                    fp_mem_pool_put(n);
            } else {
                fp_mt_drop_at((uint32_t)i);
            }
            fp_mt_maybe_shrink();
        }
        if (FP_UNLIKELY(fp_mt_sweep_on))
            fp_mt_sweep_tick();
    }
    FP_MEM_UNLOCK();
}

static void *fp_mem_new_block(fp_mem *m, PyMemAllocatorEx *orig, size_t nelem, size_t elsize,
                              int zeroed)
{
    const fp_mem_session *s = &m->s;
    int64_t size;
    int ok = 1;
    void *p;
    if (FP_UNLIKELY(m->kill_wanted | (s->node == 0))) {
        if (m->kill_wanted)
            fp_mem_send_kill(m);
        if (s->node == 0) {
            m->probe_seen++;
            return zeroed ? orig->calloc(orig->ctx, nelem, elsize) : orig->malloc(orig->ctx, nelem);
        }
    }
    if (!zeroed)
        size = nelem > (size_t)INT64_MAX ? INT64_MAX : (int64_t)nelem;
    else if (elsize != 0 && nelem > (size_t)INT64_MAX / elsize)
        size = INT64_MAX;
    else
        size = (int64_t)(nelem * elsize);
    FP_MEM_LOCK();
    if (s->any_cap) {
        /* a top-level call under its cap: one comparison */
        if (!(s->outer == NULL && !s->tripped && fp_mem_fits(s->recp->live, size, s->recp->cap)))
            ok = fp_mem_admit_slow(m, size, 0, 0);
    }
    FP_MEM_UNLOCK();
    if (FP_UNLIKELY(!ok)) {
        if (m->kill_wanted)
            fp_mem_send_kill(m);
        return NULL;
    }
    p = zeroed ? orig->calloc(orig->ctx, nelem, elsize) : orig->malloc(orig->ctx, nelem);
    if (p != NULL) {
        FP_MEM_LOCK();
        fp_mem_added(s, p, size);
        FP_MEM_UNLOCK();
    }
    return p;
}

static void *fp_mem_malloc(void *ctx, size_t size)
{
    PyMemAllocatorEx *orig = (PyMemAllocatorEx *)ctx;
    fp_mem *m = fp_tls_mem;
    if (FP_LIKELY(m == NULL || !m->s.active))
        return orig->malloc(orig->ctx, size);
    return fp_mem_new_block(m, orig, size, 1, 0);
}

static void *fp_mem_calloc(void *ctx, size_t nelem, size_t elsize)
{
    PyMemAllocatorEx *orig = (PyMemAllocatorEx *)ctx;
    fp_mem *m = fp_tls_mem;
    if (FP_LIKELY(m == NULL || !m->s.active))
        return orig->calloc(orig->ctx, nelem, elsize);
    return fp_mem_new_block(m, orig, nelem, elsize, 1);
}

/* Realloc inside a call.  The old block leaves the chain it counted for and
 * the new one is counted for the running call's chain; a record in both sees
 * the difference.  A block the table does not list (allocated before any
 * call, or untracked) has an unknown old size: its whole new size is counted
 * (documented as an over-count). */
static __attribute__((noinline)) void *fp_mem_realloc_active(fp_mem *m, PyMemAllocatorEx *orig,
                                                             void *ptr, size_t new_size)
{
    int64_t size = new_size > (size_t)INT64_MAX ? INT64_MAX : (int64_t)new_size;
    int64_t old = -1;
    uint32_t old_node = 0, n = m->s.node;
    int ok, tracked;
    void *p;
    if (FP_UNLIKELY(m->kill_wanted))
        fp_mem_send_kill(m);
    if (FP_UNLIKELY(n == 0)) {
        m->probe_seen++;
        p = orig->realloc(orig->ctx, ptr, new_size);
        if (p != NULL && ptr != NULL && fp_mt_count)
            fp_mem_forget((uintptr_t)ptr);
        return p;
    }
    FP_MEM_LOCK();
    if (ptr != NULL && fp_mt_count) {
        int64_t i = fp_mt_find((uintptr_t)ptr);
        if (i >= 0) {
            old = FP_MT_SIZE(fp_mt_slots[i].meta);
            old_node = FP_MT_NODE(fp_mt_slots[i].meta);
        }
    }
    ok = fp_mem_admit(m, size, old_node, old > 0 ? old : 0);
    FP_MEM_UNLOCK();
    if (!ok) {
        if (m->kill_wanted)
            fp_mem_send_kill(m);
        return NULL;
    }
    p = orig->realloc(orig->ctx, ptr, new_size);
    if (p == NULL)
        return NULL;
    FP_MEM_LOCK();
    if (old >= 0) {
        int64_t i = fp_mt_find((uintptr_t)ptr);     /* nothing ran since: still there */
        if (i >= 0) {
            fp_mem_chain_sub(old_node, old, 1);
            fp_mt_delete_at((uint32_t)i);
        } else {
            old = -1;
            old_node = 0;
        }
    }
    tracked = fp_mt_insert((uintptr_t)p, size, n);
    /* fp_mem_chain_add, with gross grown only by what is new to each record */
    {
        uint32_t c = n;
        while (c) {
            fp_mem_owner *o = fp_own(c);
            if (o->counts) {
                fp_mem_owner *r = o->rec == c ? o : fp_own(o->rec);
                int in_old = old >= 0 && (old_node == n || fp_mem_chain_counts(old_node, o->rec));
                r->live += size;
                r->gross += in_old ? (size > old ? size - old : 0) : size;
                if (r->live > r->peak)
                    r->peak = r->live;
                if (tracked)
                    r->blocks++;
                else
                    r->inexact = 1;
            }
            c = o->parent;
        }
    }
    if (tracked)
        fp_own(n)->entries++;
    else
        fp_mt_untracked++;
    if (old >= 0)
        fp_mem_entry_gone(old_node);
    if (FP_UNLIKELY(fp_mt_sweep_on))
        fp_mt_sweep_tick();
    FP_MEM_UNLOCK();
    return p;
}

/* Realloc outside any call while the table lists blocks: a tracked block
 * leaves the accounting (its old size is subtracted as if freed; nothing is
 * added outside calls). */
static __attribute__((noinline)) void *fp_mem_realloc_listed(PyMemAllocatorEx *orig, void *ptr,
                                                             size_t new_size)
{
    void *p = orig->realloc(orig->ctx, ptr, new_size);
    if (p != NULL && ptr != NULL)
        fp_mem_forget((uintptr_t)ptr);
    return p;
}

/* The idle paths of realloc and free are a test and a tail call into the
 * allocator we wrap (goal 14): whatever needs registers or a stack frame is
 * in a noinline function of its own, so gcc emits no prologue for the usual
 * case. */
static void *fp_mem_realloc(void *ctx, void *ptr, size_t new_size)
{
    PyMemAllocatorEx *orig = (PyMemAllocatorEx *)ctx;
    fp_mem *m = fp_tls_mem;
    if (FP_UNLIKELY(m != NULL && m->s.active))
        return fp_mem_realloc_active(m, orig, ptr, new_size);
    if (FP_UNLIKELY(fp_mt_count != 0))
        return fp_mem_realloc_listed(orig, ptr, new_size);
    return orig->realloc(orig->ctx, ptr, new_size);
}

static __attribute__((noinline)) void fp_mem_free_listed(PyMemAllocatorEx *orig, void *ptr)
{
    if (ptr != NULL)
        fp_mem_forget((uintptr_t)ptr);
    orig->free(orig->ctx, ptr);
}

static void fp_mem_free(void *ctx, void *ptr)
{
    PyMemAllocatorEx *orig = (PyMemAllocatorEx *)ctx;
    if (FP_UNLIKELY(fp_mt_count != 0))     /* the idle test: one load */
        fp_mem_free_listed(orig, ptr);
    else
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

/* Does an allocation through this domain reach our hook?  A 1-byte probe
 * under a session with node 0 (seen, not counted), with the GIL held. */
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
    m->probe_seen = 0;
    p = (domain == PYMEM_DOMAIN_OBJ) ? PyObject_Malloc(1) : PyMem_Malloc(1);
    seen = m->probe_seen;
    if (p != NULL) {
        if (domain == PYMEM_DOMAIN_OBJ)
            PyObject_Free(p);
        else
            PyMem_Free(p);
    }
    m->s = saved;
    return seen > 0;
}

/* Slow path of fp_mem_ensure: the top of domain's chain is cur, not what we
 * last knew.  Still ours further down (someone wrapped us: tracemalloc), or
 * restored past us? */
static void fp_mem_recheck_domain(PyMemAllocatorDomain domain, PyMemAllocatorEx cur)
{
    if (cur.malloc != fp_mem_malloc && !fp_mem_reaches_hook(domain)) {
        /* Someone restored allocators from before our install (for example
         * tracemalloc.stop() after a start() that predates us): wrap again.
         * Frees made meanwhile went past us: forget the table. */
        if (fp_mem_wrap(domain) != 0)
            return;
        FP_MEM_LOCK();
        fp_mt_forget_all();
        FP_MEM_UNLOCK();
        PyMem_GetAllocator(domain, &cur);
    }
    fp_mem_known_top[domain] = cur;
}

static inline int fp_mem_top_known(PyMemAllocatorDomain domain, const PyMemAllocatorEx *cur)
{
    return cur->malloc == fp_mem_known_top[domain].malloc
           && cur->ctx == fp_mem_known_top[domain].ctx;
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

/* Before each memory-limited call: is the hook still in both chains?  Both
 * tops are read first and compared inline: nothing changed since we last
 * looked is the usual case. */
static inline void fp_mem_ensure(void)
{
    PyMemAllocatorEx obj, mem;
    PyMem_GetAllocator(PYMEM_DOMAIN_OBJ, &obj);
    PyMem_GetAllocator(PYMEM_DOMAIN_MEM, &mem);
    if (FP_UNLIKELY(!fp_mem_top_known(PYMEM_DOMAIN_OBJ, &obj)))
        fp_mem_recheck_domain(PYMEM_DOMAIN_OBJ, obj);
    if (FP_UNLIKELY(!fp_mem_top_known(PYMEM_DOMAIN_MEM, &mem)))
        fp_mem_recheck_domain(PYMEM_DOMAIN_MEM, mem);
}

/* ---------------------------------------------------------- arm / disarm */

/* The node for a call of record rec nested in a call recorded under parent
 * (0: none made; the caller then records under parent, or rec at top level). */
static uint32_t fp_mem_nested_node(uint32_t rec, uint32_t parent)
{
    uint32_t n;
    fp_mem_owner *o;
    n = fp_mem_owner_new();
    if (n == 0)
        return 0;
    o = fp_own(n);
    o->rec = rec;
    o->parent = parent;
    o->refs = 1;            /* the running call */
    o->counts = !fp_mem_chain_counts(parent, rec);
    fp_own(rec)->refs++;
    fp_own(parent)->refs++;
    return n;
}

/* Start a session for budget generation `gen` (memory limit `limit` bytes,
 * `charged` already charged to it).  *rec is the budget's record, created
 * here at its first memory-limited call.  `saved` receives the enclosing
 * session, which keeps counting through the inner one: its cap still applies. */
static inline void fp_mem_arm(fp_mem *m, fp_mem_session *saved, uint32_t *rec, uint64_t gen,
                              int64_t limit, int64_t charged, int enforce_cap)
{
    fp_mem_session *s = &m->s;
    uint32_t r;
    FP_MEM_LOCK();
    r = *rec;
    if (r == 0) {
        r = fp_mem_owner_new();
        if (r != 0) {
            fp_mem_owner *o = fp_own(r);
            o->rec = r;
            o->refs = 1;        /* the budget */
            o->counts = 1;
            *rec = r;
        }
    }
    if (r != 0)
        fp_own(r)->cap = limit - charged;
    *saved = *s;
    s->active = 1;
    s->owner_gen = gen;
    s->enforce_cap = r != 0 && enforce_cap;
    s->tripped = 0;
    s->killed = 0;
    s->rec = r;
    s->recp = r != 0 ? fp_own(r) : NULL;
    s->own_node = 0;
    if (saved->active) {
        s->outer = saved;
        s->any_cap = s->enforce_cap || saved->any_cap;
        s->node = saved->node;      /* out of memory: the outer chain still counts */
        if (r != 0 && saved->node == 0) {
            s->node = r;
        } else if (r != 0) {
            uint32_t n = fp_mem_nested_node(r, saved->node);
            if (n != 0) {
                s->node = n;
                s->own_node = 1;
            }
        }
    } else {
        s->outer = NULL;
        s->any_cap = s->enforce_cap;
        s->node = r;
        m->reserve = 0;
        m->kill_wanted = 0;
    }
    FP_MEM_UNLOCK();
}

/* End the session (right after fn returned, with the GIL held); `out`
 * receives it.  A memory interrupt sent for this call and not raised yet is
 * dropped here, so it cannot land after enforce() returned. */
static inline void fp_mem_disarm(fp_mem *m, const fp_mem_session *saved, fp_mem_session *out)
{
    fp_mem_session *s = &m->s;
    *out = *s;
    if (FP_UNLIKELY(s->killed)) {
        m->kill_wanted = 0;
        PyThreadState_SetAsyncExc(PyThread_get_thread_ident(), NULL);
    }
    if (s->own_node) {
        FP_MEM_LOCK();
        fp_mem_owner_unref(s->node);            /* the nested node's call reference */
        FP_MEM_UNLOCK();
    }
    *s = *saved;
    if (!saved->active) {
        m->reserve = 0;
        m->kill_wanted = 0;
    }
}

/* charge_memory(): the budget's cap shrinks by nbytes. */
static inline void fp_mem_charge(uint32_t rec, int64_t nbytes)
{
    fp_mem_owner *r;
    if (rec == 0)
        return;
    FP_MEM_LOCK();
    r = fp_own(rec);
    r->cap = r->cap > INT64_MIN + nbytes ? r->cap - nbytes : INT64_MIN;
    FP_MEM_UNLOCK();
}

/* The budget is deallocated: its record is gone.  Entries still counted for
 * it stay while another record of their chain lives; the others are garbage,
 * dropped as they are freed or found by the sweep. */
static void fp_mem_release(uint32_t rec)
{
    fp_mem_owner *r;
    if (rec == 0)
        return;
    FP_MEM_LOCK();
    r = fp_own(rec);
    if (r->entries != 0 && r->entries == fp_mt_count) {
        /* Every entry in the table is this budget's own (the usual case: a
         * call returned its result and the budget is dropped first): all of
         * them become garbage at once, so empty the table in one go. */
        if (fp_mt_mask + 1 > FP_MEM_TABLE_MIN) {
            fp_mem_entry *fresh = fp_mt_alloc(FP_MEM_TABLE_MIN);
            if (fresh != NULL)
                fp_mt_replace(fresh, FP_MEM_TABLE_MIN);
            else
                memset(fp_mt_slots, 0, (size_t)(fp_mt_mask + 1) * sizeof(fp_mem_entry));
        } else {
            memset(fp_mt_slots, 0, (size_t)(fp_mt_mask + 1) * sizeof(fp_mem_entry));
        }
        fp_mt_count = 0;
        fp_mt_sweep_on = 0;
        r->blocks = 0;
        r->entries = 0;
    }
    r->dead = 1;
    if (r->blocks > 0) {
        fp_mt_dead_blocks += r->blocks;
        fp_mt_sweep_start();
    }
    fp_mem_owner_unref(rec);
    FP_MEM_UNLOCK();
}

/* ------------------------------------------------------------ introspection */

/* Calls returned out of order on this thread (greenlets): end whatever
 * session is open, without handing anything on (the budgets' records keep
 * the figures counted so far). */
static inline void fp_mem_abandon(fp_mem *m)
{
    fp_mem_session *s = &m->s;
    if (s->active && s->own_node) {
        FP_MEM_LOCK();
        fp_mem_owner_unref(s->node);
        FP_MEM_UNLOCK();
    }
    memset(s, 0, sizeof(*s));
    m->reserve = 0;
    m->kill_wanted = 0;
}

static inline void fp_mem_abandon_into(fp_mem *m, fp_mem_session *out)
{
    *out = m->s;
    fp_mem_abandon(m);
}

typedef struct {
    uint64_t capacity;        /* table slots */
    uint64_t blocks;          /* tracked blocks */
    uint64_t max_slots;
    uint64_t max_blocks;      /* blocks the table holds at its maximum size */
    uint64_t untracked;       /* blocks counted but not tracked (table full), ever */
    uint64_t owners;          /* records and nodes alive */
    int64_t dead_blocks;      /* entries counted for a deallocated budget */
    int sweeping;
} fp_mem_table_info;

static void fp_mem_get_info(fp_mem_table_info *info)
{
    FP_MEM_LOCK();
    info->capacity = fp_mt_slots ? (uint64_t)fp_mt_mask + 1 : 0;
    info->blocks = fp_mt_count;
    info->max_slots = fp_mt_max_slots;
    info->max_blocks = (uint64_t)fp_mt_max_slots * 3 / 4;
    info->untracked = fp_mt_untracked;
    info->owners = fp_mem_owners;
    info->dead_blocks = fp_mt_dead_blocks;
    info->sweeping = fp_mt_sweep_on;
    FP_MEM_UNLOCK();
}

/* Tests: a smaller maximum table size (a power of two, FP_MEM_TABLE_MIN ..
 * FP_MEM_TABLE_MAX; a table already larger keeps its size until it shrinks). */
static uint32_t fp_mem_set_max_slots(uint32_t slots)
{
    uint32_t old = fp_mt_max_slots, v = FP_MEM_TABLE_MIN;
    while (v < slots && v < FP_MEM_TABLE_MAX)
        v *= 2;
    fp_mt_max_slots = v;
    return old;
}

#endif /* FASTPATH_MEMHOOK_H */
