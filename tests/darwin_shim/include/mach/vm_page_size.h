/* Shim of <mach/vm_page_size.h> (tests/darwin_shim). */
#ifndef SHIM_MACH_VM_PAGE_SIZE_H
#define SHIM_MACH_VM_PAGE_SIZE_H
#include "../shim_types.h"
extern vm_size_t vm_kernel_page_size;
#endif
