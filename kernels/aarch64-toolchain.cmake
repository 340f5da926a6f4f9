# Cross-compile the kernels for 64-bit ARM Linux with Debian's gcc-aarch64-linux-gnu:
#   cmake -S . -B out/kernels-a64 -DCMAKE_TOOLCHAIN_FILE=kernels/aarch64-toolchain.cmake && cmake --build out/kernels-a64
# ctest runs the test binary under qemu-aarch64 (Cortex-A76: sdot; PARAEDGE_QEMU_CPU=cortex-a72: no sdot).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
if(DEFINED ENV{PARAEDGE_QEMU_CPU})
  set(PE_QEMU_CPU $ENV{PARAEDGE_QEMU_CPU})
else()
  set(PE_QEMU_CPU cortex-a76)
endif()
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -cpu ${PE_QEMU_CPU} -L /usr/aarch64-linux-gnu)
