/* ParaEdge's qemu TCG plugin: counts executed guest instructions (all vCPUs), a repeatable ARM cost
 * figure without ARM hardware. At every translated block it adds the block's instruction count to
 * one counter, inline (no callback per block). At exit it writes the total to `out=FILE`
 * (default: stderr through qemu's log).  qemu-aarch64 -plugin ./libinsn_count.so,out=/tmp/n ./prog
 * Built by tools/emu/qemu_insn.py against the qemu-plugin.h of the installed qemu's Debian source.
 *
 * Stage markers (`stages=FILE`): the guest brackets a stage with lseek(MARK_BASE - code, 0, 0), a
 * syscall that fails harmlessly with EBADF and costs a handful of instructions:
 * code 2k / 2k+1 begins / ends stage k (k < MAX_STAGES), RESET drops what was accumulated (warm-up),
 * SNAPSHOT appends "snapshot" and one "k instructions calls" line per used stage to FILE, then resets.
 * edge/diag/markers.py is the guest side.
 *
 * Hot blocks (`blocks=FILE,block_stage=K`): every translated block also gets its own inline counter;
 * at exit one "start-address instructions executions" line per block executed inside stage K goes
 * to FILE, which tools/emu/arm_profile.py attributes to the functions of the guest's libraries. */
#include <stdlib.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

static uint64_t executed;
static char out_path[4096];

#define MARK_BASE (-4096)
#define MAX_STAGES 64
#define RESET (2 * MAX_STAGES)
#define SNAPSHOT (2 * MAX_STAGES + 1)
static char stages_path[4096];
static char blocks_path[4096];
struct block {
    uint64_t vaddr, n_insns, executions, at_begin, in_stage;
    struct block *next;
};
static struct block *blocks; /* every translated block, newest first (never freed: qemu may re-run them) */
static int64_t block_stage = -1;

static uint64_t stage_begin[MAX_STAGES], stage_insns[MAX_STAGES], stage_calls[MAX_STAGES];

static void snapshot(void) {
    FILE *f = fopen(stages_path, "a");
    if (f) {
        fputs("snapshot\n", f);
        for (int k = 0; k < MAX_STAGES; k++)
            if (stage_calls[k]) fprintf(f, "%d %" PRIu64 " %" PRIu64 "\n", k, stage_insns[k], stage_calls[k]);
        fclose(f);
    }
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1, uint64_t a2, uint64_t a3,
                       uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8) {
    (void)id, (void)vcpu, (void)a2, (void)a3, (void)a4, (void)a5, (void)a6, (void)a7, (void)a8;
    int64_t code = MARK_BASE - (int64_t)a1;
    if (num != 62 /* aarch64 lseek */ || code < 0 || code > SNAPSHOT) return;
    if (code == SNAPSHOT) snapshot();
    if (code >= RESET) {
        memset(stage_insns, 0, sizeof stage_insns);
        memset(stage_calls, 0, sizeof stage_calls);
    } else if (code % 2 == 0) {
        stage_begin[code / 2] = executed;
        if (code / 2 == block_stage)
            for (struct block *b = blocks; b; b = b->next) b->at_begin = b->executions;
    } else {
        if (code / 2 == block_stage)  /* blocks first translated inside the stage started at 0 */
            for (struct block *b = blocks; b; b = b->next) b->in_stage += b->executions - b->at_begin;
        stage_insns[code / 2] += executed - stage_begin[code / 2];
        stage_calls[code / 2] += 1;
    }
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &executed, qemu_plugin_tb_n_insns(tb));
    if (!blocks_path[0]) return;
    struct block *b = calloc(1, sizeof *b);
    if (!b) return;
    b->vaddr = qemu_plugin_tb_vaddr(tb);
    b->n_insns = qemu_plugin_tb_n_insns(tb);
    b->next = blocks;
    blocks = b;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &b->executions, 1);
}

static void at_exit(qemu_plugin_id_t id, void *data) {
    (void)id;
    (void)data;
    if (blocks_path[0]) {
        FILE *bf = fopen(blocks_path, "w");
        for (struct block *b = blocks; bf && b; b = b->next)
            if (b->in_stage) fprintf(bf, "%" PRIx64 " %" PRIu64 " %" PRIu64 "\n", b->vaddr, b->n_insns, b->in_stage);
        if (bf) fclose(bf);
    }
    char line[64];
    snprintf(line, sizeof line, "%" PRIu64 "\n", executed);
    FILE *f = out_path[0] ? fopen(out_path, "w") : NULL;
    if (f) {
        fputs(line, f);
        fclose(f);
    } else {
        qemu_plugin_outs(line);
    }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (!strncmp(argv[i], "out=", 4)) snprintf(out_path, sizeof out_path, "%s", argv[i] + 4);
        else if (!strncmp(argv[i], "stages=", 7)) snprintf(stages_path, sizeof stages_path, "%s", argv[i] + 7);
        else if (!strncmp(argv[i], "blocks=", 7)) snprintf(blocks_path, sizeof blocks_path, "%s", argv[i] + 7);
        else if (!strncmp(argv[i], "block_stage=", 12)) block_stage = strtoll(argv[i] + 12, NULL, 10);
    }
    if (stages_path[0]) qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
