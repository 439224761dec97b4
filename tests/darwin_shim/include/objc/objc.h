/* Shim of <objc/objc.h>: the runtime's types only; its functions are dlsym'ed (tests/darwin_shim). */
#ifndef SHIM_OBJC_OBJC_H
#define SHIM_OBJC_OBJC_H
#include <stdbool.h>
typedef struct objc_object *id;
typedef struct objc_selector *SEL;
/* objc/objc.h: bool where the compiler defines __OBJC_BOOL_IS_BOOL (arm64), else signed char. */
#if defined(__aarch64__)
typedef bool BOOL;
#else
typedef signed char BOOL;
#endif
#endif
