/*
 * The Apple types darwin.c uses, laid out as in Apple's SDK (zig's any-darwin-any headers, the
 * ones `make check-darwin` compiles against). tests/darwin_shim/layout.h asserts the sizes and
 * offsets that darwin.c relies on, and build.py compiles it both here and with zig for
 * aarch64-macos against the real headers: the two builds agree or the shim does not build.
 */
#ifndef SHIM_TYPES_H
#define SHIM_TYPES_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef unsigned int natural_t;
typedef int integer_t;
typedef natural_t mach_port_t;
typedef int kern_return_t;
typedef natural_t mach_msg_type_number_t;
typedef integer_t host_flavor_t;
typedef integer_t *host_info64_t;
typedef uintptr_t vm_size_t;
typedef int boolean_t;

#define MACH_PORT_NULL ((mach_port_t)0)

/* mach/kern_return.h */
#define KERN_SUCCESS            0
#define KERN_PROTECTION_FAILURE 2
#define KERN_INVALID_ARGUMENT   4
#define KERN_FAILURE            5
#define KERN_RESOURCE_SHORTAGE  6
#define KERN_NO_ACCESS          8
#define KERN_INVALID_HOST       22

#endif
