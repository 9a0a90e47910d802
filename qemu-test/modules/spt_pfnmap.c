// SPDX-License-Identifier: GPL-2.0
/*
 * spt_pfnmap: a misc device, /dev/spt_pfnmap, whose mmap() maps freshly
 * allocated pages with remap_pfn_range(): a VM_PFNMAP mapping of ordinary RAM
 * without refcounted PTEs, like a driver's MMIO or reserved-memory mapping.
 *
 * Used by the guest test kvm_pfnmap_cow: mapped MAP_PRIVATE, the mapping is a
 * COW mapping (remap_pfn_range() then has to cover the whole VMA and sets
 * vm_pgoff to the first pfn, so vm_normal_page() returns NULL for its PTEs), and
 * a write to it goes through wp_page_copy() with no old folio. That COW break
 * must reach a secondary MMU as a plain invalidation, not as a change_pte
 * update.
 *
 * Page i of a mapping starts filled with the byte 0x70 + i % 16, and its
 * 32-bit word at offset 0x100 (the word kvm_pfnmap_cow's L2 reads) is
 * 0x9f000000 | i. The pages of every mmap() stay allocated until the file is
 * released (the last reference, which a mapping holds too, is dropped).
 *
 * read() returns the contents of the pages of the file's latest mmap() (from
 * the file position, as one buffer): what the device pages hold, whatever the
 * process's private mapping shows after a COW break (/proc/self/pagemap shows
 * nothing of a VM_PFNMAP mapping: the page walker skips it).
 */
#include <linux/fs.h>
#include <linux/gfp.h>
#include <linux/list.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#define SPT_PFNMAP_MAX_ORDER	4	/* 16 pages */
#define SPT_PFNMAP_WORD		0x100

struct spt_pfnmap_block {
	struct list_head node;
	struct page *pages;
	unsigned int order;
};

struct spt_pfnmap_file {
	struct mutex lock;
	struct list_head blocks;
};

static int spt_pfnmap_open(struct inode *inode, struct file *file)
{
	struct spt_pfnmap_file *f = kzalloc(sizeof(*f), GFP_KERNEL);

	if (!f)
		return -ENOMEM;
	mutex_init(&f->lock);
	INIT_LIST_HEAD(&f->blocks);
	file->private_data = f;
	return 0;
}

static int spt_pfnmap_release(struct inode *inode, struct file *file)
{
	struct spt_pfnmap_file *f = file->private_data;
	struct spt_pfnmap_block *b, *tmp;

	list_for_each_entry_safe(b, tmp, &f->blocks, node) {
		list_del(&b->node);
		__free_pages(b->pages, b->order);
		kfree(b);
	}
	kfree(f);
	return 0;
}

static ssize_t spt_pfnmap_read(struct file *file, char __user *buf,
			       size_t len, loff_t *pos)
{
	struct spt_pfnmap_file *f = file->private_data;
	struct spt_pfnmap_block *b;
	size_t size, off, done = 0;
	ssize_t ret = 0;

	/*
	 * The lock only guards the list: mmap() takes it under mmap_lock, so
	 * it must not be held across copy_to_user(), which may fault. A block
	 * stays until release, which cannot run while read() holds the file.
	 */
	mutex_lock(&f->lock);
	b = list_first_entry_or_null(&f->blocks, struct spt_pfnmap_block, node);
	mutex_unlock(&f->lock);
	size = b ? PAGE_SIZE << b->order : 0;
	while (*pos >= 0 && *pos < size && done < len) {
		off = *pos;
		/* Page by page: the block is not one virtually contiguous buffer. */
		ret = min(len - done, PAGE_SIZE - off % PAGE_SIZE);
		if (copy_to_user(buf + done,
				 page_address(b->pages + off / PAGE_SIZE) +
				 off % PAGE_SIZE, ret)) {
			ret = -EFAULT;
			break;
		}
		done += ret;
		*pos += ret;
	}
	if (ret < 0 && !done)
		return ret;
	return done;
}

static int spt_pfnmap_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct spt_pfnmap_file *f = file->private_data;
	unsigned long npages = vma_pages(vma);
	struct spt_pfnmap_block *b;
	unsigned long i;
	int ret;

	/* Whole powers of two, so that the allocation is exactly the mapping. */
	if (!npages || !is_power_of_2(npages) ||
	    npages > (1UL << SPT_PFNMAP_MAX_ORDER) || vma->vm_pgoff)
		return -EINVAL;

	b = kzalloc(sizeof(*b), GFP_KERNEL);
	if (!b)
		return -ENOMEM;
	b->order = ilog2(npages);
	b->pages = alloc_pages(GFP_KERNEL, b->order);
	if (!b->pages) {
		kfree(b);
		return -ENOMEM;
	}
	for (i = 0; i < npages; i++) {
		u8 *p = page_address(b->pages + i);

		memset(p, 0x70 + i % 16, PAGE_SIZE);
		*(u32 *)(p + SPT_PFNMAP_WORD) = 0x9f000000 | i;
	}

	/* On a COW (MAP_PRIVATE) mapping this must cover the whole VMA. */
	ret = remap_pfn_range(vma, vma->vm_start, page_to_pfn(b->pages),
			      npages << PAGE_SHIFT, vma->vm_page_prot);
	if (ret) {
		__free_pages(b->pages, b->order);
		kfree(b);
		return ret;
	}

	mutex_lock(&f->lock);
	list_add(&b->node, &f->blocks);
	mutex_unlock(&f->lock);
	return 0;
}

static const struct file_operations spt_pfnmap_fops = {
	.owner		= THIS_MODULE,
	.open		= spt_pfnmap_open,
	.release	= spt_pfnmap_release,
	.read		= spt_pfnmap_read,
	.mmap		= spt_pfnmap_mmap,
};

static struct miscdevice spt_pfnmap_dev = {
	.minor	= MISC_DYNAMIC_MINOR,
	.name	= "spt_pfnmap",
	.fops	= &spt_pfnmap_fops,
};

module_misc_device(spt_pfnmap_dev);
MODULE_DESCRIPTION("shadowpt test: RAM pages mapped with remap_pfn_range()");
MODULE_LICENSE("GPL");
