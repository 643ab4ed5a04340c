/*
 * Test-setup shim, never shipped: Rust's standard library (1.78 and later) imports
 * ProcessPrng from bcryptprimitives.dll, which Wine 8 does not provide. This DLL, built with
 * the mingw-w64 compiler and placed next to the test executables, exports ProcessPrng and
 * forwards it to RtlGenRandom (SystemFunction036 in advapi32.dll), which Wine has.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
