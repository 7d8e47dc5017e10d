package runc

import (
	"bufio"
	"bytes"
	"os"
	"runtime"
	"slices"
	"sync"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"golang.org/x/sys/unix"
)

// x32Bit marks a system call number as one of the x32 ABI (amd64 only).
const x32Bit = 0x40000000

// x32Runs reports whether this kernel runs x32 system calls
// (CONFIG_X86_X32_ABI). Docker's profile lists SCMP_ARCH_X32 beside
// SCMP_ARCH_X86_64 and SCMP_ARCH_X86, and runc compiles the whole profile
// once per architecture in every container it starts: ~10 ms each here,
// a quarter of a "runc run". A kernel without the x32 ABI fails every x32
// call with ENOSYS whatever the filter says, so the filter need not cover it.
//
// The answer comes from issuing one x32 getpid. That is safe only when no
// seccomp filter applies to lbuild itself (one without x32 in its
// architectures would kill the calling thread): under a filter, or off
// amd64, x32 is taken to run.
var x32Runs = sync.OnceValue(func() bool {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return x32Decide(runtime.GOARCH, seccompMode(), func() bool {
		_, _, errno := unix.RawSyscall(x32Bit|unix.SYS_GETPID, 0, 0, 0)
		return errno != unix.ENOSYS
	})
})

// x32Decide is x32Runs' rule: on amd64 with no seccomp filter on this
// thread (mode "0"), what probe says; anywhere else (another
// architecture, a filter, a mode it cannot read) true, without probing.
func x32Decide(goarch, mode string, probe func() bool) bool {
	if goarch != "amd64" || mode != "0" {
		return true
	}
	return probe()
}

// seccompMode is the Seccomp field of this thread's status ("0": none,
// "2": filtered), or "" if it cannot be read. The caller must stay on the
// same OS thread for the answer to hold (x32Runs locks it).
func seccompMode() string {
	b, err := os.ReadFile("/proc/thread-self/status")
	if err != nil {
		return ""
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if v, ok := bytes.CutPrefix(sc.Bytes(), []byte("Seccomp:")); ok {
			return string(bytes.TrimSpace(v))
		}
	}
	return ""
}

// runnableArches drops from a profile's architectures those this kernel
// cannot run (x32 when x32Runs is false), so runc compiles no filter for
// them. What a process can do is unchanged: an x32 call still fails, but
// by the filter's bad-architecture action (libseccomp's default, which runc
// keeps: the calling thread is killed with SIGSYS) instead of the kernel's
// ENOSYS; a program that probes for x32 that way dies.
func runnableArches(arches []specs.Arch, x32 bool) []specs.Arch {
	if x32 {
		return arches
	}
	return slices.DeleteFunc(slices.Clone(arches), func(a specs.Arch) bool { return a == specs.ArchX32 })
}
