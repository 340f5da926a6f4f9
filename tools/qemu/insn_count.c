/* ParaEdge's qemu TCG plugin: counts executed guest instructions (all vCPUs), a repeatable ARM cost
 * figure without ARM hardware. At every translated block it adds the block's instruction count to
 * one counter, inline (no callback per block). At exit it writes the total to `out=FILE`
 * (default: stderr through qemu's log).  qemu-aarch64 -plugin ./libinsn_count.so,out=/tmp/n ./prog
 * Built by tools/qemu_insn.py against the qemu-plugin.h of the installed qemu's Debian source.
 *
 * Stage markers (`stages=FILE`): the guest brackets a stage with lseek(MARK_BASE - code, 0, 0), a
 * syscall that fails harmlessly with EBADF and costs a handful of instructions:
 * code 2k / 2k+1 begins / ends stage k (k < MAX_STAGES), RESET drops what was accumulated (warm-up),
 * SNAPSHOT appends "snapshot" and one "k instructions calls" line per used stage to FILE, then resets.
 * edge/insn_markers.py is the guest side. */
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
    } else {
        stage_insns[code / 2] += executed - stage_begin[code / 2];
        stage_calls[code / 2] += 1;
    }
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &executed, qemu_plugin_tb_n_insns(tb));
}

static void on_exit(qemu_plugin_id_t id, void *data) {
    (void)id;
    (void)data;
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
    }
    if (stages_path[0]) qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_exit, NULL);
    return 0;
}
