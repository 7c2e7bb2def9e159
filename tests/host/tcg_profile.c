/* A QEMU TCG plugin: how often each translation block of the guest ran, with its guest
 * instructions and memory accesses, written at exit as one line per block:
 *     <guest pc, hex> <instructions> <executions> <memory accesses> <last instruction>
 * Under TCG a guest's time follows what it executes (every instruction and memory access is
 * emulated), so these counts explain its benchmark figures where no CPU counter can.
 * `tests/host/tcg_profile.py` builds it, boots a kernel with it and sums the lines per
 * function. Debian's QEMU 7.2 ships no plugin header: the few declarations of its plugin API
 * (version 1) this uses are written out below. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
typedef struct {
    const char *target_name;
    struct { int min; int cur; } version;
    bool system_emulation;
    union { struct { int smp_vcpus; int max_vcpus; } system; };
} qemu_info_t;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
enum qemu_plugin_mem_rw { QEMU_PLUGIN_MEM_R = 1, QEMU_PLUGIN_MEM_W, QEMU_PLUGIN_MEM_RW };
typedef void (*tb_trans_cb)(qemu_plugin_id_t, struct qemu_plugin_tb *);
typedef void (*udata_cb)(qemu_plugin_id_t, void *);
extern void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t, tb_trans_cb);
extern size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *);
extern uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *);
extern struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *, size_t);
extern char *qemu_plugin_insn_disas(const struct qemu_plugin_insn *);
extern void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *, enum qemu_plugin_op,
                                                     void *, uint64_t);
extern void qemu_plugin_register_vcpu_mem_inline(struct qemu_plugin_insn *, enum qemu_plugin_mem_rw,
                                                 enum qemu_plugin_op, void *, uint64_t);
extern void qemu_plugin_register_atexit_cb(qemu_plugin_id_t, udata_cb, void *);
extern void g_free(void *);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

/* One translation (a block translated again gets another record; the script sums by pc).
 * Counted with inline adds: one vCPU, as our guests have. */
struct block {
    uint64_t pc, insns, executions, accesses;
    char last[64];
    struct block *next;
};
static struct block *blocks;
static const char *out_path = "tcg_profile.txt";

static void translated(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    struct block *block = calloc(1, sizeof *block);
    if (!block) return;
    block->pc = qemu_plugin_tb_vaddr(tb);
    block->insns = qemu_plugin_tb_n_insns(tb);
    for (size_t i = 0; i < block->insns; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        qemu_plugin_register_vcpu_mem_inline(insn, QEMU_PLUGIN_MEM_RW, QEMU_PLUGIN_INLINE_ADD_U64,
                                             &block->accesses, 1);
        if (i + 1 == block->insns) {
            char *text = qemu_plugin_insn_disas(insn);
            snprintf(block->last, sizeof block->last, "%s", text ? text : "?");
            g_free(text);
        }
    }
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &block->executions, 1);
    block->next = blocks;
    blocks = block;
}

static void exiting(qemu_plugin_id_t id, void *unused) {
    FILE *out = fopen(out_path, "w");
    if (!out) { perror(out_path); return; }
    for (struct block *block = blocks; block; block = block->next)
        if (block->executions)
            fprintf(out, "%llx %llu %llu %llu %s\n", (unsigned long long)block->pc,
                    (unsigned long long)block->insns, (unsigned long long)block->executions,
                    (unsigned long long)block->accesses, block->last);
    fclose(out);
}

__attribute__((visibility("default")))
int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        if (!strncmp(argv[i], "out=", 4)) out_path = argv[i] + 4;
    qemu_plugin_register_vcpu_tb_trans_cb(id, translated);
    qemu_plugin_register_atexit_cb(id, exiting, NULL);
    return 0;
}
