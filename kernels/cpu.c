/* Which GEMM paths exist in this build and which can run on this CPU (dispatch happens in Python,
 * from these two bitmasks). */
#include "pe_neon.h"

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#endif

int pe_paths_compiled(void) {
    return (1 << PE_PATH_SCALAR) | (1 << PE_PATH_NEON) | (pe_dot_compiled() ? 1 << PE_PATH_DOT : 0);
}

int pe_paths_runnable(void) {
    int m = (1 << PE_PATH_SCALAR) | (1 << PE_PATH_NEON);
#if defined(__aarch64__) && defined(__linux__)
    if (pe_dot_compiled() && (getauxval(AT_HWCAP) & HWCAP_ASIMDDP)) m |= 1 << PE_PATH_DOT;
#elif !defined(__aarch64__)
    if (pe_dot_compiled()) m |= 1 << PE_PATH_DOT; /* SIMDe emulates sdot on any CPU */
#endif
    return m;
}

#define PE_STR2(x) #x
#define PE_STR(x) PE_STR2(x)
const char *pe_build_info(void) {
#if PE_NATIVE_NEON
    return "aarch64 native NEON, " __VERSION__;
#else
    return "SIMDe NEON emulation (" PE_STR(SIMDE_VERSION_MAJOR) "." PE_STR(SIMDE_VERSION_MINOR) "), " __VERSION__;
#endif
}
